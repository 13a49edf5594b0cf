"""Long-lived requests (event streams, long polls) end when their rights do, and are capped.

The server here sends keepalives every 0.3 s, and rights are re-checked at
least that often: a follower who lost access gets ``close`` with
``{"state": "forbidden"}``, a long poll 401 or 403.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, AsyncIterator

import httpx
import pytest
from httpx_sse import aconnect_sse

from core import queue, users
from handlers.app import Server
from tests.conftest import SessionAuth, wait_for

DUMMY = "jobs.example.DummyJob"
OPERATOR = queue.operator("operator")
KEEPALIVE = 0.3
DEADLINE = 10.0  # s for a lost right to end a request: many keepalives


@pytest.fixture
async def deck(config, db, team, job_classes) -> AsyncIterator[Server]:
    server = Server(dataclasses.replace(config, max_streams_per_user=3, max_streams=5), db, keepalive=KEEPALIVE)
    await server.start()
    yield server
    await server.stop()


def client(server: Server, user: dict[str, Any] | None = None, **kwargs: Any) -> httpx.AsyncClient:
    auth = kwargs.pop("auth", None) or (SessionAuth(server, user) if user else None)
    return httpx.AsyncClient(base_url=server.url, auth=auth, timeout=30, **kwargs)


async def sse(source: Any) -> AsyncIterator[Any]:
    """The stream's events; each has data (``retry:`` comes with the first, not as an empty message)."""
    async for event in source.aiter_sse():
        assert event.data, event
        yield event


async def pending(db) -> str:
    return str((await queue.enqueue(db, DUMMY, {"sleep": 1}, user=OPERATOR))["_id"])


async def follow_until_revoked(http: httpx.AsyncClient, job_id: str, revoke) -> dict[str, Any]:
    """Follow a job that stays pending; ``await revoke()`` after the first event; the close event's data."""
    async with aconnect_sse(http, "GET", f"/job/follow/{job_id}") as source:
        events = sse(source)
        first = await anext(events)
        assert first.event == "state"
        await revoke()
        async with asyncio.timeout(DEADLINE):
            async for event in events:
                if event.event == "close":
                    return json.loads(event.data)
    raise AssertionError("the stream ended without close")


async def test_a_follower_who_is_disabled_gets_close_forbidden(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        close = await follow_until_revoked(http, job_id, lambda: users.set_active(db, "reader", False, actor="t"))
    assert close["state"] == "forbidden"


async def test_a_follower_whose_read_permission_is_revoked_gets_close_forbidden(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        close = await follow_until_revoked(http, job_id, lambda: users.change_access(
            db, "reader", revoke=["job:jobs.example.*:r"], actor="t"))
    assert close == {"state": "forbidden", "events": {"state": 1, "log": 0}}


async def test_a_basic_auth_follower_whose_password_changed_gets_close_forbidden(deck, db, team):
    job_id = await pending(db)
    async with client(deck, auth=("reader", "read-pw")) as http:
        close = await follow_until_revoked(http, job_id, lambda: users.set_password(
            db, "reader", "a-new-password", actor="t"))
    assert close["state"] == "forbidden"


async def test_a_follower_whose_token_expires_gets_close_forbidden(deck, db, team):
    job_id = await pending(db)
    deck.auth.token_seconds = 2
    async with client(deck, team["reader"]) as http:
        close = await follow_until_revoked(http, job_id, lambda: asyncio.sleep(0))  # time does it
    assert close["state"] == "forbidden"


async def test_a_log_follower_loses_access_too(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        async with aconnect_sse(http, "GET", f"/job/log/{job_id}", params={"follow": "true"}) as source:
            await users.set_active(db, "reader", False, actor="t")
            async with asyncio.timeout(DEADLINE):
                closes = [json.loads(e.data) async for e in sse(source) if e.event == "close"]
    assert closes == [{"state": "forbidden", "events": {"state": 0, "log": 0}}]


async def test_followers_who_keep_their_rights_are_not_cut(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        async with aconnect_sse(http, "GET", f"/job/follow/{job_id}") as source:
            events = sse(source)
            assert (await anext(events)).event == "state"
            # Several re-checks pass; then the job ends and the stream closes as usual.
            await asyncio.sleep(KEEPALIVE * 4)  # time passing is the point: re-checks happen meanwhile
            await queue.kill(db, job_id, user=OPERATOR)
            async with asyncio.timeout(DEADLINE):
                closes = [json.loads(e.data) async for e in events if e.event == "close"]
    assert closes[0]["state"] == "killed"


async def test_a_long_poll_of_a_disabled_user_ends_401(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        poll = asyncio.create_task(http.get(f"/job/poll/{job_id}", params={"timeout": 60}))
        await wait_for(lambda: deck.services.streams.open == 1, message="the poll to wait")
        await users.set_active(db, "reader", False, actor="t")
        reply = await asyncio.wait_for(poll, DEADLINE)
    assert reply.status_code == 401 and "disabled" in reply.json()["error"]


async def test_a_long_poll_whose_permission_is_revoked_ends_403(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["reader"]) as http:
        poll = asyncio.create_task(http.get(f"/job/poll/{job_id}", params={"timeout": 60}))
        await wait_for(lambda: deck.services.streams.open == 1, message="the poll to wait")
        await users.change_access(db, "reader", revoke=["job:jobs.example.*:r"], actor="t")
        reply = await asyncio.wait_for(poll, DEADLINE)
    assert reply.status_code == 403 and "may not read" in reply.json()["error"]


async def test_streams_past_the_per_user_cap_are_429_and_enqueue_nothing(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["executor"]) as http, open_streams(http, job_id, 3):
        refused = await http.get(f"/job/follow/{job_id}")
        assert refused.status_code == 429 and "already has 3 open streams" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) > 0
        poll = await http.get(f"/job/poll/{job_id}", params={"timeout": 5})
        assert poll.status_code == 429
        enqueue = await http.post("/job", json={"qual_name": DUMMY, "args": {"sleep": 1}})
        assert enqueue.status_code == 429
        assert await db.queue.count_documents({}) == 1
        # Another user still may.
        async with client(deck, team["reader"]) as other:
            assert (await other.get(f"/job/poll/{job_id}", params={"timeout": 1})).status_code == 200
    # Closed streams give their slots back.
    async with client(deck, team["executor"]) as http:
        assert (await http.get(f"/job/poll/{job_id}", params={"timeout": 1})).status_code == 200


async def test_streams_past_the_servers_cap_are_429(deck, db, team):
    job_id = await pending(db)
    async with client(deck, team["executor"]) as one, client(deck, team["admin"]) as two, \
            open_streams(one, job_id, 3), open_streams(two, job_id, 2):
        async with client(deck, team["reader"]) as third:
            refused = await third.get(f"/job/follow/{job_id}")
    assert refused.status_code == 429 and "the server has 5 open streams" in refused.json()["error"]


class open_streams:
    """``n`` open follow streams of ``job_id`` (each has sent its first event) while the block runs."""

    def __init__(self, http: httpx.AsyncClient, job_id: str, n: int) -> None:
        self.http, self.job_id, self.n = http, job_id, n
        self.open: list[tuple[Any, Any]] = []

    async def __aenter__(self) -> None:
        for _ in range(self.n):
            stream = aconnect_sse(self.http, "GET", f"/job/follow/{self.job_id}")
            source = await stream.__aenter__()
            assert source.response.status_code == 200
            events = sse(source)  # kept: a collected iterator would close its response
            await anext(events)
            self.open.append((stream, events))

    async def __aexit__(self, *exc: Any) -> None:
        for stream, events in self.open:
            await events.aclose()
            await stream.__aexit__(None, None, None)
