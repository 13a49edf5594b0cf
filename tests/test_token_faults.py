"""Sessions and tokens under database faults: fail points, an election, a real stop and restart.

Nothing healthy turns into an error (a dropped connection is retried; a failed
note of ``last_used`` fails no request), a check the database cannot answer is
503, never 401, and a logout that could not be written says so (503) and is
not lost: the session still ends when it is sent again.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from core import users
from core.config import Config
from core.db import Database
from handlers.app import Server
from tests.conftest import wait_for


async def fail_point(db: Database, mode: Any, **data: Any) -> None:
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


def bearer(server: Server, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def login(server: Server, name: str = "executor", password: str = "exec-pw") -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        reply = await client.post("/login", auth=(name, password))
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]["token"]


def forget(server: Server) -> None:
    """Empty the server's caches: the next check reads the token and the user from the database."""
    server.token_cache.drop()
    server.user_cache.drop()


async def test_a_dropped_connection_is_retried_and_a_failing_database_is_503_not_401(server, team, db):
    token = await login(server)
    async with bearer(server, token) as client:
        forget(server)
        await fail_point(db, {"times": 1}, failCommands=["find"], closeConnection=True)
        assert (await client.get("/whoami")).status_code == 200  # the driver's retried read
        forget(server)
        await fail_point(db, "alwaysOn", failCommands=["find"], closeConnection=True)
        try:
            reply = await client.get("/whoami")
            assert reply.status_code == 503, reply.text
        finally:
            await fail_point(db, "off")
        assert (await client.get("/whoami")).status_code == 200


async def test_a_failed_note_of_last_used_fails_no_request(server, team, db):
    token = await login(server)
    await fail_point(db, "alwaysOn", failCommands=["update"], closeConnection=True)
    try:
        async with bearer(server, token) as client:
            assert (await client.get("/whoami")).status_code == 200
    finally:
        await fail_point(db, "off")


async def test_a_logout_the_database_refused_is_503_and_goes_through_when_sent_again(server, team, db):
    token = await login(server)
    async with bearer(server, token) as client:
        await fail_point(db, "alwaysOn", failCommands=["delete"], closeConnection=True)
        try:
            assert (await client.post("/logout")).status_code == 503
        finally:
            await fail_point(db, "off")
        assert (await client.get("/whoami")).status_code == 200  # not ended: the client was told so
        assert (await client.post("/logout")).status_code == 200
        assert (await client.get("/whoami")).status_code == 401


@pytest.fixture
async def own_deck(own_server: Any, tmp_path) -> AsyncIterator[tuple[Server, Any, Any]]:
    """A server on an embedded database of its own (on disk), with the team's executor; (server, start, stop)."""
    start, stop = own_server
    url = start()
    db = Database.connect(url, "jobdeck")
    await db.setup(log_retention_days=1)
    await users.add(db, "executor", "exec-pw", actor="test")
    server = Server(Config(mongo_url=url, database="jobdeck", data_dir=str(tmp_path / "var"), port=0), db)
    await server.start()
    yield server, start, stop
    await server.stop()
    await db.close()


async def test_sessions_survive_a_stop_and_restart_of_the_database_and_a_logout_then_still_ends_one(own_deck):
    server, start, stop = own_deck
    token, other = await login(server), await login(server)
    async with bearer(server, token) as client:
        assert (await client.get("/whoami")).status_code == 200
        url = server.config.mongo_url
        stop()
        try:
            started = time.monotonic()
            # Once the caches stop trusting what they hold (2 s without the change stream): 503, not 401.
            await wait_for(lambda: _status(client, "/whoami", 503), timeout=15, message="503 while stopped")
            reply = await client.post("/logout")
            assert reply.status_code == 503, reply.text
            assert time.monotonic() - started < 15
        finally:
            assert start() == url
        await wait_for(lambda: _status(client, "/whoami", 200), timeout=20, message="200 after the restart")
        assert (await client.post("/logout")).status_code == 200
        assert (await client.get("/whoami")).status_code == 401
    async with bearer(server, other) as client:  # the other session was not touched
        assert (await client.get("/whoami")).status_code == 200


async def test_a_logout_during_an_election_ends_the_session(own_deck):
    server, _, _ = own_deck
    token = await login(server)
    async with bearer(server, token) as client:
        assert (await client.get("/whoami")).status_code == 200
        # Writes are refused for 3 s: the driver waits for the new primary and retries the delete.
        await server.db.client.admin.command("replSetStepDown", 3, force=True)
        reply = await client.post("/logout")
        assert reply.status_code in (200, 503), reply.text
        if reply.status_code == 503:  # told, not lost: sent again once the election is over
            await wait_for(lambda: _status(client, "/logout", 200, method="POST"), timeout=15,
                           message="the logout after the election")
        await wait_for(lambda: _status(client, "/whoami", 401), timeout=5, message="the session ended")


async def _status(client: httpx.AsyncClient, path: str, status: int, method: str = "GET") -> bool:
    return (await client.request(method, path)).status_code == status


async def test_logins_during_an_election_either_work_or_say_503(own_deck):
    server, _, _ = own_deck
    await server.db.client.admin.command("replSetStepDown", 2, force=True)
    replies = await asyncio.gather(*(_login(server) for _ in range(5)))
    assert {status for status, _ in replies} <= {200, 503}, replies
    for status, token in replies:  # every session handed out works once the election is over
        if status == 200:
            async with bearer(server, token) as client:
                await wait_for(lambda: _status(client, "/whoami", 200), timeout=15, message="the new session")


async def _login(server: Server) -> tuple[int, str | None]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        reply = await client.post("/login", auth=("executor", "exec-pw"))
        return reply.status_code, reply.json().get("data", {}).get("token") if reply.status_code == 200 else None
