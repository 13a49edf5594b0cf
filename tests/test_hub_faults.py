"""The hub across change-stream errors, injected with ``configureFailPoint``: reopen, resume, resync.

A ``failCommand`` fail point fails the hub's ``getMore`` (and, while the
stream is down, the ``aggregate`` that reopens it). Errors carry code 6
(HostUnreachable) without a label, so the driver does not resume on its own
and the hub has to; ``closeConnection`` makes them network errors instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from bson import ObjectId

from core import queue, users
from core.cache import Cache
from core.db import Database
from core.follow import Event, follow
from core.hub import RESYNC, Change, Hub, Subscription
from tests.conftest import wait_for

ADMIN = queue.operator("test")
DUMMY = "jobs.example.DummyJob"
HOST_UNREACHABLE = 6
HISTORY_LOST = 286
#: The stream's getMore, and the aggregate that would reopen it.
STREAM = ["getMore", "aggregate"]

FailPoint = Callable[..., Awaitable[None]]


@pytest.fixture
async def fail_point(db: Database) -> AsyncIterator[FailPoint]:
    """``await fail_point(mode, **data)`` sets the server's ``failCommand`` (one at a time); off at teardown."""
    async def configure(mode: Any, **data: Any) -> None:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})

    yield configure
    await configure("off")  # server-wide: it must not outlive the test


@pytest.fixture
async def hub(db: Database) -> AsyncIterator[Hub]:
    """A started hub whose followers poll every 50 ms while its stream is down."""
    started = Hub(db, poll_seconds=0.05)
    await started.start()
    assert started.live
    yield started
    await started.stop()


async def add_log(db: Database, job_id: ObjectId, seq: int) -> None:
    await db.log.insert_one({"job_id": job_id, "seq": seq, "created": datetime.now(timezone.utc),
                             "level": "INFO", "message": f"record {seq}"})


async def failed(hub: Hub, times: int) -> None:
    """Wait until the hub has met ``times`` stream errors in all."""
    await wait_for(lambda: hub.failures >= times, timeout=20, message=f"{times} stream errors")


async def reopened(hub: Hub, streams: int = 2) -> None:
    await wait_for(lambda: hub.live and hub.streams_opened >= streams, timeout=20,
                   message="the hub to reopen its stream")


async def drain(subscription: Subscription) -> None:
    """Take what ``subscription`` holds: whatever it gets afterwards was sent afterwards."""
    while await subscription.get(0) is not None and subscription.hub.live:
        pass  # while the stream is down, one get empties the queue (and polls)


async def news(subscription: Subscription, timeout: float = 5) -> list[Any]:
    """What ``subscription`` gets until it has been silent for ``timeout`` seconds."""
    got = []
    while (event := await subscription.get(timeout)) is not None:
        got.append(event)
        timeout = 0.5
    return got


async def until_close(events: AsyncIterator[Event | None], timeout: float = 10) -> list[Event]:
    """The follower's events up to its ``close`` (which must come within ``timeout`` seconds)."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            if event is not None:
                got.append(event)
                if event.kind == "close":
                    return got
    raise AssertionError(f"the follower ended without close: {got}")


@pytest.mark.usefixtures("job_classes")
async def test_a_job_that_ends_while_the_stream_is_down_closes_its_follower(
        db: Database, hub: Hub, fail_point: FailPoint) -> None:
    job = await queue.enqueue(db, DUMMY, {}, user=ADMIN)
    async with contextlib.aclosing(follow(db, job["_id"], user=ADMIN, hub=hub, idle=60)) as events:
        assert (await anext(events)).kind == "state"
        await fail_point("alwaysOn", failCommands=STREAM, errorCode=HOST_UNREACHABLE)
        await failed(hub, 3)  # the getMore, then two reopens
        await fail_point("off")  # the next reopen works, after the hub's backoff
        # The follower waits through the outage, polling: it re-reads and
        # finds each new record.
        for seq in (1, 2):
            waiting = asyncio.ensure_future(anext(events))
            await add_log(db, job["_id"], seq)
            record = await waiting
            assert record.kind == "log" and record.data["seq"] == seq
        # A slow client holds it at the second while the job ends, before the stream is back.
        await queue.kill(db, job["_id"], user=ADMIN)
        await reopened(hub)

        got = await until_close(events)

    assert got[-1].data["state"] == "killed"


async def test_a_quiet_stream_resumes_from_its_post_batch_token(
        db: Database, hub: Hub, fail_point: FailPoint) -> None:
    job_id = ObjectId()
    with hub.subscribe(job_id) as subscription:
        # Nothing the hub watches has happened yet: its only token is the
        # post-batch one. A network error, which leaves the hub its token.
        await fail_point("alwaysOn", failCommands=STREAM, closeConnection=True)
        await wait_for(lambda: not hub.live, timeout=20, message="the stream to fail")
        await add_log(db, job_id, 1)
        await fail_point("off")
        await reopened(hub)

        changes = [event for event in await news(subscription) if isinstance(event, Change)]

    assert [(kind, data["seq"]) for kind, data in changes] == [("log", 1)]  # replayed: resumed, not from now
    assert hub.failures >= 1


async def test_without_a_usable_token_the_hub_reopens_from_now_and_then_resyncs(
        db: Database, hub: Hub, fail_point: FailPoint, caplog: pytest.LogCaptureFixture) -> None:
    job_id = ObjectId()
    with hub.subscribe(job_id) as subscription:
        await fail_point("alwaysOn", failCommands=STREAM, errorCode=HOST_UNREACHABLE)
        await failed(hub, 2)
        # The reopen from the token: its history is lost; and the first
        # attempt from now fails too, so the hub backs off once more.
        await fail_point({"times": 2}, failCommands=["aggregate"], errorCode=HISTORY_LOST)
        await failed(hub, 4)
        await drain(subscription)
        await add_log(db, job_id, 1)  # before the stream reopens from now: it never sees this one
        await reopened(hub)

        assert await news(subscription) == [RESYNC]  # so the follower re-reads it
        await add_log(db, job_id, 2)
        assert [data["seq"] for _, data in await news(subscription)] == [2]  # and the stream goes on

    lost = [r for r in caplog.records if r.name == "core.hub" and "cannot resume" in r.getMessage()]
    assert len(lost) == 1, caplog.text


async def test_a_stream_that_fails_after_every_open_is_reopened_ever_more_slowly(
        db: Database, hub: Hub, fail_point: FailPoint) -> None:
    with hub.subscribe(ObjectId()):
        await fail_point("alwaysOn", failCommands=["getMore"], errorCode=HOST_UNREACHABLE)
        # Each open works and its first getMore fails: live only for a moment.
        await wait_for(lambda: hub.streams_opened >= 2, timeout=20, message="a reopen")
        began = time.monotonic()

        await wait_for(lambda: hub.streams_opened >= 5, timeout=20, message="three more")

    assert time.monotonic() - began >= 0.2 + 0.4 + 0.8 - 0.2  # not every 0.1 s


async def test_a_user_changed_while_the_stream_could_not_resume_is_read_again_once_it_reopens(
        db: Database, hub: Hub, fail_point: FailPoint) -> None:
    user = await users.add(db, "bob", "pw", actor="test")
    cache = Cache(db, "user", hub=hub, stale_seconds=60)  # only the hub may drop what it holds
    load = functools.partial(users.find, db, "bob")
    assert (await cache.get("bob", load))["active"] is True
    await fail_point("alwaysOn", failCommands=STREAM, errorCode=HOST_UNREACHABLE)
    await failed(hub, 2)
    await fail_point({"times": 2}, failCommands=["aggregate"], errorCode=HISTORY_LOST)
    # Written as another process would (no Database.changed), and never seen
    # by the stream, which reopens from now.
    await db.user.update_one({"name": user["name"]}, {"$set": {"active": False}, "$inc": {"version": 1}})
    await reopened(hub)

    assert (await cache.get("bob", load))["active"] is False
    cache.close()


async def test_the_heard_time_follows_the_streams_empty_answers(db: Database, hub: Hub,
                                                               fail_point: FailPoint) -> None:
    await wait_for(lambda: hub.heard_at is not None and time.monotonic() - hub.heard_at < 1.5, timeout=10,
                   message="a quiet stream to answer")
    await fail_point("alwaysOn", failCommands=STREAM, errorCode=HOST_UNREACHABLE)
    await failed(hub, 1)
    heard = hub.heard_at
    await asyncio.sleep(0.5)  # time passing is the point: a failing stream tells nothing new
    assert hub.heard_at == heard
