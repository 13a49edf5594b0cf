"""The hub: one change stream, fanned out as shared changes into queues bounded in events and bytes."""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import AsyncIterator, Awaitable, Callable

import pytest
from bson import Decimal128, ObjectId

from core.db import Database
from core.encoding import dumps
from core.hub import RESYNC, Change, Hub
from tests.conftest import wait_for

KB = 1000
_SEQ = itertools.count(1)


@pytest.fixture
async def hub_factory(db: Database) -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    """``await hub_factory(**bounds)``: a started hub on the test database (stopped at teardown)."""
    started: list[Hub] = []

    async def start(**bounds: int) -> Hub:
        hub = Hub(db, **bounds)
        await hub.start()
        assert hub.live
        started.append(hub)
        return hub

    yield start
    for hub in started:
        await hub.stop()


async def log(db: Database, hub: Hub, job_id: ObjectId, *sizes: int) -> None:
    """Insert a log record of about ``size`` bytes per size, and wait until the hub has fanned them out."""
    seen = hub.events
    for size in sizes:
        await db.log.insert_one({"job_id": job_id, "seq": next(_SEQ), "created": datetime.now(timezone.utc),
                                 "level": "INFO", "message": "x" * size})
    await wait_for(lambda: hub.events >= seen + len(sizes), timeout=10, message="the hub to see the records")


async def test_every_subscriber_of_a_job_gets_the_same_change_serialised_once(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory()
    job_id = ObjectId()
    with hub.subscribe(job_id) as first, hub.subscribe(job_id) as second:
        await log(db, hub, job_id, 10)

        one, other = await first.get(1), await second.get(1)

    assert isinstance(one, Change) and one is other
    kind, record = one
    assert kind == "log" and record["job_id"] == job_id and "_id" not in record
    assert one.text == dumps(record) and one.size >= len(one.text)
    assert hub.queued_bytes == 0  # taken by both: nothing holds it


async def test_a_subscription_past_its_bytes_drops_its_queue_and_resyncs(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory(queue_bytes=250 * KB)
    job_id = ObjectId()
    with hub.subscribe(job_id) as slow:
        await log(db, hub, job_id, 100 * KB, 100 * KB)
        assert 200 * KB < slow.bytes == hub.queued_bytes < 250 * KB

        await log(db, hub, job_id, 100 * KB)  # a third would pass 250 kB

        assert slow.bytes == hub.queued_bytes == 0  # dropped at once, not at the next get
        assert await slow.get(1) is RESYNC
        await log(db, hub, job_id, 10)
        assert (await slow.get(1)).data["message"] == "x" * 10  # and it receives again


async def test_a_change_larger_than_the_bound_still_fits_an_empty_queue(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory(queue_bytes=10 * KB)
    job_id = ObjectId()
    with hub.subscribe(job_id) as subscription:
        await log(db, hub, job_id, 50 * KB)
        assert len((await subscription.get(1)).data["message"]) == 50 * KB

        await log(db, hub, job_id, 50 * KB, 50 * KB)

        assert await subscription.get(1) is RESYNC


async def test_the_hub_counts_a_change_once_however_many_hold_it(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory(max_bytes=250 * KB)
    job_id = ObjectId()
    subscriptions = [hub.subscribe(job_id) for _ in range(50)]
    await log(db, hub, job_id, 100 * KB, 100 * KB)

    assert 200 * KB < hub.queued_bytes < 250 * KB  # not 50 times that
    assert all(200 * KB < subscription.bytes < 250 * KB for subscription in subscriptions)
    for subscription in subscriptions:
        subscription.close()
    assert hub.queued_bytes == 0 and hub.subscribers == 0


async def test_past_the_hub_bound_those_behind_resync_and_those_caught_up_do_not(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory(max_bytes=250 * KB)
    job_id = ObjectId()
    with hub.subscribe(job_id) as keen, hub.subscribe(job_id) as behind:
        await log(db, hub, job_id, 100 * KB, 100 * KB)
        assert [len((await keen.get(1)).data["message"]) for _ in range(2)] == [100 * KB, 100 * KB]

        await log(db, hub, job_id, 100 * KB)  # 300 kB if behind kept its two

        assert await behind.get(1) is RESYNC
        assert len((await keen.get(1)).data["message"]) == 100 * KB
        assert hub.queued_bytes == 0


async def test_closing_a_subscription_releases_what_it_holds(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory()
    job_id = ObjectId()
    subscription = hub.subscribe(job_id)
    await log(db, hub, job_id, 10 * KB, 10 * KB)
    assert hub.queued_bytes == subscription.bytes > 20 * KB

    subscription.close()
    subscription.close()  # idempotent

    assert hub.queued_bytes == 0 and hub.subscribers == 0


async def test_a_change_that_is_not_json_resyncs_its_followers_and_the_hub_goes_on(
        db: Database, hub_factory: Callable[..., Awaitable[Hub]]) -> None:
    hub = await hub_factory()
    job_id = ObjectId()
    with hub.subscribe(job_id) as subscription:
        await db.log.insert_one({"job_id": job_id, "seq": next(_SEQ), "amount": Decimal128("1.5")})
        assert await subscription.get(5) is RESYNC

        await log(db, hub, job_id, 10)

        assert (await subscription.get(5)).data["message"] == "x" * 10
