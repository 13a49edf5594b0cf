"""core.keyset: cursors that walk a listing exactly once, refuse forgeries, and pages that read a page."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId

from core import counts, journal, keyset, logs, queue
from core.errors import BadArgument

OPERATOR = queue.operator("test")
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def finished(n: int, *, at: datetime, qual_name: str = "jobs.example.DummyJob") -> dict[str, Any]:
    return {"_id": ObjectId(), "n": n, "qual_name": qual_name, "args": {}, "state": "complete", "version": 3,
            "priority": 0, "finished_at": at, "enqueued": {"at": at}}


async def walk_all(list_page, *, per_page: int, backward_from: str | None = None,
                   during=None) -> list[dict[str, Any]]:
    """Every item of a listing, page by page through next cursors (or prev ones, from ``backward_from``)."""
    seen: list[dict[str, Any]] = []
    cursor = backward_from
    page = await list_page(before=cursor) if cursor else await list_page()
    while True:
        seen.extend(page.items if not backward_from else reversed(page.items))
        if during is not None:
            await during()
        cursor = page.prev if backward_from else page.next
        if cursor is None:
            return seen
        page = await list_page(before=cursor) if backward_from else await list_page(after=cursor)


async def test_walking_the_journal_visits_every_job_once_in_order_while_jobs_are_added(db):
    # Ties: three jobs per millisecond, and runs of the same finished_at.
    docs = [finished(n, at=NOW - timedelta(seconds=n // 3)) for n in range(200)]
    await db.journal.insert_many([dict(doc) for doc in docs])
    added = 0

    async def add_newer() -> None:  # newer than the walk's position: never seen, never displacing
        nonlocal added
        added += 1
        await db.journal.insert_one(finished(1000 + added, at=NOW + timedelta(seconds=1)))

    def list_page(**cursor):
        return journal.list_journal(db, user=OPERATOR, per_page=7, **cursor)

    seen = await walk_all(list_page, per_page=7, during=add_newer)
    expected = sorted(docs, key=lambda d: (d["finished_at"], d["_id"]), reverse=True)
    assert [d["_id"] for d in seen] == [d["_id"] for d in expected]
    # Backward from the last page's end: the same jobs, the other way round.
    last = await journal.list_journal(db, user=OPERATOR, per_page=7, after=keyset.encode_cursor(
        "journal", [("finished_at", -1), ("_id", -1)], expected[-2], forward=True))
    assert [d["_id"] for d in last.items] == [expected[-1]["_id"]] and last.next is None
    back = await walk_all(list_page, per_page=7, backward_from=last.prev)
    now = await db.journal.find().sort([("finished_at", -1), ("_id", -1)]).to_list()  # with those added
    assert added > 20 and [d["_id"] for d in back] == [d["_id"] for d in now[-2::-1]]


async def test_walking_the_queue_with_ties_in_priority_visits_every_job_once(db):
    docs = [{"_id": ObjectId(), "n": n, "qual_name": "jobs.example.DummyJob", "args": {}, "state": "pending",
             "priority": random.choice([0, 0, 0, 5, -3]), "version": 1} for n in range(150)]
    await db.queue.insert_many([dict(doc) for doc in docs])
    await db.queue.insert_one({"_id": ObjectId(), "qual_name": "x", "state": "complete", "priority": 0})

    def list_page(**cursor):
        return journal.list_queue(db, user=OPERATOR, per_page=11, **cursor)

    seen = await walk_all(list_page, per_page=11)
    expected = sorted(docs, key=lambda d: (-d["priority"], d["_id"]))
    assert [d["_id"] for d in seen] == [d["_id"] for d in expected]
    last = (await journal.list_queue(db, user=OPERATOR, per_page=11, page=-1))
    back = await walk_all(list_page, per_page=11, backward_from=last.prev)
    assert [d["_id"] for d in back] == [d["_id"] for d in reversed(expected[:len(expected) - last.count])]


async def test_walking_a_log_by_cursor(db):
    job_id = ObjectId()
    await db.log.insert_many([{"job_id": job_id, "seq": seq, "message": str(seq), "created": NOW}
                              for seq in range(5, 60)])
    seen = await walk_all(lambda **cursor: logs.page(db, job_id, per_page=10, **cursor), per_page=10)
    assert [r["seq"] for r in seen] == list(range(5, 60))


@pytest.mark.parametrize("tamper", [
    lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),
    lambda c: c[:5] + ("x" if c[5] != "x" else "y") + c[6:],
    lambda c: "garbage", lambda c: "", lambda c: c + "." + c, lambda c: "a" * 5000,
])
async def test_a_tampered_cursor_is_refused(db, tamper):
    await db.journal.insert_many([finished(n, at=NOW - timedelta(seconds=n)) for n in range(5)])
    page = await journal.list_journal(db, user=OPERATOR, per_page=2)
    with pytest.raises(BadArgument, match="after: not a cursor of this listing"):
        await journal.list_journal(db, user=OPERATOR, per_page=2, after=tamper(page.next))


async def test_a_cursor_for_another_sort_or_listing_or_direction_is_refused(db):
    await db.journal.insert_many([finished(n, at=NOW - timedelta(seconds=n)) for n in range(5)])
    page = await journal.list_journal(db, user=OPERATOR, per_page=2)
    with pytest.raises(BadArgument, match="made for sort -finished_at,-_id, not -runtime,-_id"):
        await journal.list_journal(db, user=OPERATOR, per_page=2, sort="-runtime", after=page.next)
    with pytest.raises(BadArgument, match="after: not a cursor of this listing"):
        await journal.list_queue(db, user=OPERATOR, per_page=2, sort="-finished_at,-_id", after=page.next)
    with pytest.raises(BadArgument, match="this is an after cursor; pass it as after"):
        await journal.list_journal(db, user=OPERATOR, per_page=2, before=page.next)
    with pytest.raises(BadArgument, match="after or before, not both"):
        await journal.list_journal(db, user=OPERATOR, after=page.next, before=page.next)
    with pytest.raises(BadArgument, match="after or page, not both"):
        await journal.list_journal(db, user=OPERATOR, after=page.next, page=2)


async def test_total_count_is_capped_at_ten_pages_and_marked_inexact_beyond(db):
    await db.journal.insert_many([finished(n, at=NOW - timedelta(minutes=n)) for n in range(45)])
    page = await journal.list_journal(db, user=OPERATOR, per_page=4)
    assert (page.total_count, page.total_exact, page.page_count) == (40, False, 10)
    whole = await journal.list_journal(db, user=OPERATOR, per_page=5)
    assert (whole.total_count, whole.total_exact) == (45, True)
    exact = await journal.list_journal(db, user=OPERATOR, per_page=4, page=-1)
    assert (exact.total_count, exact.total_exact, exact.page, exact.count) == (45, True, 11, 1)


async def examined(db, collection: str, work) -> dict[str, int]:
    """``totalDocsExamined`` of the finds and of the counts ``work`` sends, replayed through explain."""
    commands: list[dict[str, Any]] = []
    coll = getattr(db, collection)
    real_find, real_count = coll.find, coll.count_documents

    def find(filter=None, projection=None, **kwargs):
        commands.append({"find": filter, "projection": projection})
        return real_find(filter, projection, **kwargs)

    async def count(filter, **kwargs):
        commands.append({"count": filter})
        return await real_count(filter, **kwargs)

    setattr(coll, "find", find)
    setattr(coll, "count_documents", count)
    try:
        await work()
    finally:
        del coll.find, coll.count_documents
    totals = {"find": 0, "count": 0}
    for command in commands:
        kind = "find" if "find" in command else "count"
        plan = await real_find(command[kind]).explain()
        totals[kind] += plan["executionStats"]["totalDocsExamined"]
    return totals


async def test_first_and_keyset_pages_of_the_journal_read_a_few_pages_of_2000(db):
    # Jobs finished up to now (not the module's NOW, minutes old in a long run: the first page walks
    # back from now, and a window that has grown over an empty spell holds more when it reaches them).
    # 2,000 are enough: a read of them all would break the bounds below several times over.
    now = datetime.now(timezone.utc).replace(microsecond=0)
    await db.journal.insert_many([finished(n, at=now - timedelta(seconds=n // 2)) for n in range(2000)])
    pages = []

    async def first() -> None:
        pages.append(await journal.list_journal(db, user=OPERATOR, per_page=25))

    reads = await examined(db, "journal", first)
    # At most six pages for the page, and about ten for the count (its last window may overshoot).
    assert reads["find"] <= 25 * 6 and reads["count"] <= 250 * 3, reads
    mid = keyset.encode_cursor("journal", [("finished_at", -1), ("_id", -1)],
                               {"finished_at": now - timedelta(seconds=500), "_id": ObjectId()}, forward=True)

    async def keyset_page() -> None:
        pages.append(await journal.list_journal(db, user=OPERATOR, per_page=25, after=mid))

    reads = await examined(db, "journal", keyset_page)
    assert reads["find"] <= 25 * 6 and reads["count"] <= 250 * 3, reads
    assert pages[1].count == 25 and pages[1].items[0]["finished_at"] < now - timedelta(seconds=499)


async def test_first_and_keyset_pages_of_the_queue_read_a_few_pages_of_2000(db, job_classes):
    # 2,000 are enough: a read of them all would break the bounds below.
    for _ in range(2):
        await queue.enqueue_many(db, [{"qual_name": "jobs.example.DummyJob", "args": {}}] * 1000, user=OPERATOR)
    # The enqueues' counted changes tell the listing where each priority level starts, once folded
    # (a worker's or server's folder does it every second; core.counts).
    await counts.fold(db)
    pages = []

    async def first() -> None:
        pages.append(await journal.list_queue(db, user=OPERATOR, per_page=25))

    first_reads = await examined(db, "queue", first)

    async def keyset_page() -> None:
        pages.append(await journal.list_queue(db, user=OPERATOR, per_page=25, after=pages[0].next))

    reads = await examined(db, "queue", keyset_page)
    # The page and its count (ten pages) in one walk, then the page's documents by _id.
    assert first_reads["find"] <= 250 * 3, first_reads
    # The page, then the count from the start again.
    assert reads["find"] <= 25 * 6 + 250 * 3, reads
    assert [p.count for p in pages] == [25, 25] and (pages[0].total_count, pages[0].total_exact) == (250, False)
    expected = await db.queue.find().sort([("priority", -1), ("_id", 1)]).limit(50).to_list()
    assert [d["_id"] for p in pages for d in p.items] == [d["_id"] for d in expected]


@pytest.mark.parametrize("hints", [
    {},  # none yet: every level read whole once
    {"low": {"p9": ObjectId(), "p0": ObjectId()},  # a level gone; low past its start, high before its end
     "high": {"p9": ObjectId(), "p0": ObjectId("0" * 24)}},
    {"low": {"p5": ObjectId("f" * 24)}, "high": {"p5": ObjectId("0" * 24)}},  # wrong way round; 0 and -3 unknown
])
async def test_walking_the_queue_is_exact_whatever_its_stored_level_hints_say(db, hints):
    docs = [{"_id": ObjectId(), "n": n, "qual_name": "jobs.example.DummyJob", "args": {}, "state": "pending",
             "priority": random.choice([0, 0, 0, 5, -3]), "version": 1} for n in range(120)]
    await db.queue.insert_many([dict(doc) for doc in docs])
    await db.queue.insert_one({"_id": ObjectId(), "qual_name": "x", "state": "killed", "priority": 5})
    if hints:
        await db.settings.insert_one({"_id": "queue_levels", **hints})

    def list_page(**cursor):
        return journal.list_queue(db, user=OPERATOR, per_page=9, **cursor)

    expected = sorted(docs, key=lambda d: (-d["priority"], d["_id"]))
    seen = await walk_all(list_page, per_page=9)
    assert [d["_id"] for d in seen] == [d["_id"] for d in expected]
    last = keyset.encode_cursor("queue", [("priority", -1), ("_id", 1)], expected[-1], forward=False)
    back = await walk_all(list_page, per_page=9, backward_from=last)
    assert [d["_id"] for d in back] == [d["_id"] for d in reversed(expected[:-1])]
    stored = await db.settings.find_one({"_id": "queue_levels"})
    levels = {d["priority"] for d in docs}
    assert {int(key[1:]) for key in stored["low"]} == {int(key[1:]) for key in stored["high"]} == levels
