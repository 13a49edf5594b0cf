"""The claimer's ready list: claims in order with one write each, kept true by offers, timers and reads."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import monitoring

from core import queue, states
from core.claim import Claimer, next_due_in
from core.config import Config
from core.db import Database

ADMIN = queue.operator("test")
NOOP = "jobs.example.NoopJob"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claimer(db: Database, clock: Clock, name: str = "w1", **options: Any) -> Claimer:
    return Claimer(db, worker=name, host="h", classes=[NOOP], clock=clock, **options)


async def enqueue(db: Database, **options: Any) -> dict[str, Any]:
    return await queue.enqueue(db, NOOP, {}, user=ADMIN, **options)


async def test_claims_follow_priority_then_age_and_read_the_queue_once(db: Database, job_classes: Any) -> None:
    jobs = [await enqueue(db, priority=p) for p in (0, 5, 0, 9)]
    claims = claimer(db, Clock())

    got = [(await claims.claim(1))[0]["_id"] for _ in jobs]

    assert got == [jobs[3]["_id"], jobs[1]["_id"], jobs[0]["_id"], jobs[2]["_id"]]
    assert claims.scans == 1
    assert await claims.claim(1) == [] and claims.scans == 1  # the list held every due job: nothing to read


async def test_an_offered_job_takes_its_place_without_a_read(db: Database, job_classes: Any) -> None:
    low = [await enqueue(db) for _ in range(3)]
    claims = claimer(db, Clock())
    assert (await claims.claim(1))[0]["_id"] == low[0]["_id"]

    urgent = await enqueue(db, priority=3)
    claims.offer(urgent)

    assert (await claims.claim(2))[0]["_id"] == urgent["_id"]
    assert claims.scans == 1


async def test_a_job_whose_offer_was_missed_is_found_within_max_age(db: Database, job_classes: Any) -> None:
    clock = Clock()
    first = await enqueue(db)
    claims = claimer(db, clock, max_age=30)
    await enqueue(db)
    assert (await claims.claim(1))[0]["_id"] == first["_id"]
    missed = await enqueue(db, priority=9)  # no offer: its event was lost

    clock.now += 31
    assert (await claims.claim(1))[0]["_id"] == missed["_id"]
    assert claims.scans == 2


async def test_a_job_due_later_is_claimed_once_due(db: Database, job_classes: Any) -> None:
    clock = Clock()
    claims = claimer(db, clock)
    assert await claims.claim(1) == []
    later = await enqueue(db)
    await db.queue.update_one({"_id": later["_id"]}, {"$set": {"query_at": datetime.now(timezone.utc) +
                                                               timedelta(seconds=0.2)}})
    claims.offer(await db.queue.find_one({"_id": later["_id"]}))
    assert await claims.claim(1) == []

    await db.queue.update_one({"_id": later["_id"]}, {"$set": {"query_at": datetime.now(timezone.utc)}})
    clock.now += 0.3
    assert (await claims.claim(1))[0]["_id"] == later["_id"]


async def test_two_claimers_with_the_same_list_never_claim_one_job_twice(db: Database, job_classes: Any) -> None:
    jobs = [await enqueue(db) for _ in range(6)]
    one, two = claimer(db, Clock(), "w1"), claimer(db, Clock(), "w2")
    await one.claim(1)
    await two.claim(1)  # both lists hold the same stubs now

    claimed = [job["_id"] for claims in (one, two, one, two, one, two) for job in await claims.claim(1)]
    claimed += [job["_id"] for claims in (one, two) for job in await claims.claim(3)]

    everything = await db.queue.find({"state": "running"}, {"locked.worker": 1}).to_list()
    assert len(everything) == len(jobs) and len(set(claimed)) == len(claimed) == len(jobs) - 2


class Finds(monitoring.CommandListener):
    """Keeps the ``find`` commands sent to the queue."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command["find"] == "queue":
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_the_next_due_time_costs_the_same_with_thousands_waiting_for_later(config: Config) -> None:
    finds = Finds()
    db = Database.connect(config.mongo_url, config.database, event_listeners=[finds])
    try:
        await db.setup(log_retention_days=1)
        now = datetime.now(timezone.utc)
        template = {"state": "pending", "priority": 0, "trial": 0, "version": 1}
        await db.queue.insert_many([{**template, "qual_name": NOOP, "query_at": now + timedelta(days=1)}
                                    for _ in range(2000)])
        await db.queue.insert_many([{**template, "qual_name": "other.Job", "query_at": now - timedelta(minutes=1)}
                                    for _ in range(500)])
        soon = {**template, "qual_name": NOOP, "query_at": datetime.now(timezone.utc) + timedelta(seconds=20)}
        await db.queue.insert_one(soon)
        finds.commands.clear()  # (those of setup)

        assert 15 < await next_due_in(db, [NOOP], ceiling=30) <= 20.1
        [command] = finds.commands
        command = {key: value for key, value in command.items() if not key.startswith("$") and key != "lsid"}
        plan = await db.db.command("explain", command, verbosity="executionStats")
        # The window from a second ago to 30 s ahead holds one job: neither the 2,000 due
        # tomorrow nor the 500 due already are read.
        assert plan["executionStats"]["totalKeysExamined"] <= 2, plan["executionStats"]
        await db.queue.delete_one({"_id": soon["_id"]})
        assert await next_due_in(db, [NOOP], ceiling=30) == 30
    finally:
        await db.close()


class Gate:
    """Holds a coroutine function until ``opened`` is set, at its start or (``after``) once it returned.

    What another task does meanwhile is the test.
    """

    def __init__(self, function: Any, *, after: bool = False) -> None:
        self.function = function
        self.after = after
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = await self.function(*args, **kwargs) if self.after else None
        self.entered.set()
        await self.opened.wait()
        return result if self.after else await self.function(*args, **kwargs)


async def test_a_job_offered_while_a_claim_is_written_keeps_its_place(db: Database, job_classes: Any,
                                                                     monkeypatch) -> None:
    low = [await enqueue(db) for _ in range(3)]
    claims = claimer(db, Clock())
    assert (await claims.claim(1))[0]["_id"] == low[0]["_id"]  # the list is read
    gate = Gate(states.claim)
    monkeypatch.setattr(states, "claim", gate)

    claiming = asyncio.create_task(claims.claim(1))
    await gate.entered.wait()
    urgent = await enqueue(db, priority=5)
    claims.offer(urgent)  # its event came while the claim of low[1] was under way
    gate.opened.set()

    assert (await claiming)[0]["_id"] == low[1]["_id"]
    assert (await claims.claim(1))[0]["_id"] == urgent["_id"]
    assert claims.scans == 1


async def test_a_job_offered_while_the_queue_is_read_is_not_lost(db: Database, job_classes: Any) -> None:
    first = await enqueue(db)
    claims = claimer(db, Clock())
    gate = Gate(claims._stubs, after=True)
    claims._stubs = gate

    claiming = asyncio.create_task(claims.claim(1))
    await gate.entered.wait()
    urgent = await enqueue(db, priority=5)  # after the read: it cannot have seen it
    claims.offer(urgent)
    gate.opened.set()

    assert (await claiming)[0]["_id"] == urgent["_id"]
    assert (await claims.claim(1))[0]["_id"] == first["_id"]
    assert claims.scans == 1 and await claims.claim(1) == []
