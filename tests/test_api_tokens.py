"""Sessions that end and API tokens, through HTTP: logout revokes everywhere, tokens act with at most
their user's rights, secrets are shown once and stored as hashes."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import httpx
import pytest

from core import tokens
from core.config import Config
from core.db import Database
from handlers.app import Server
from tests.conftest import wait_for

DUMMY = "jobs.example.DummyJob"


@pytest.fixture
async def other(config: Config, db: Database, team: dict[str, Any]) -> AsyncIterator[Server]:
    """A second server process on the same database, with its own client, caches and change stream."""
    own = Database.connect(config.mongo_url, config.database)
    await own.setup(log_retention_days=config.log_retention_days)
    server = Server(config, own)
    await server.start()
    yield server
    await server.stop()
    await own.close()


def http(server: Server, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30, **kwargs)


async def refused_within(server: Server, token: str, seconds: float = 1.0) -> float:
    """Poll ``server`` with ``token`` until it answers 401; fail after ``seconds``. The time it took."""
    started = time.monotonic()
    async with http(server, token) as client:
        await wait_for(lambda: _status(client, 401), timeout=seconds, message=f"401 within {seconds} s")
    return time.monotonic() - started


async def _status(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/whoami")).status_code == status


async def login(server: Server, name: str, password: str) -> str:
    async with http(server) as client:
        reply = await client.post("/login", auth=(name, password))
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]["token"]


async def make_token(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    reply = await client.post("/token", json={"name": "nightly", **body})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


# -- logout ------------------------------------------------------------------

async def test_logout_ends_the_bearer_token_for_every_server_within_a_second(server, other, db):
    token = await login(server, "executor", "exec-pw")
    async with http(other, token) as there:
        assert (await there.get("/whoami")).status_code == 200  # cached there now
    async with http(server, token) as here:
        assert (await here.post("/logout")).status_code == 200
        assert (await here.get("/whoami")).status_code == 401
    await refused_within(other, token)
    assert [e["action"] for e in await db.audit.find({"actor": "executor"}).sort("at", 1).to_list()] == [
        "login", "logout"]


async def test_logout_ends_the_cookie_session_too(server, other):
    async with http(server) as browser:
        assert (await browser.post("/login", json={"username": "reader", "password": "read-pw",
                                                   "cookie_only": True})).status_code == 200
        cookie = browser.cookies["jobdeck_token"]
        assert (await browser.get("/whoami")).status_code == 200
        reply = await browser.post("/logout", headers={"Origin": server.url.rsplit("/api/v1", 1)[0]})
        assert reply.status_code == 200
        assert "jobdeck_token" not in browser.cookies
    # The copied cookie value is dead as a cookie and as a bearer token, on both servers.
    async with http(server, cookies={"jobdeck_token": cookie}) as copied:
        assert (await copied.get("/whoami")).status_code == 401
    await refused_within(other, cookie)


async def test_a_logout_from_a_foreign_page_is_refused_and_ends_nothing(server, team):
    token = await login(server, "reader", "read-pw")
    async with http(server, cookies={"jobdeck_token": token}) as browser:
        reply = await browser.post("/logout", headers={"Origin": "http://evil.example"})
        assert reply.status_code == 403
    async with http(server, token) as client:
        assert (await client.get("/whoami")).status_code == 200


async def test_logout_without_a_valid_token_only_clears_the_cookie(server, db):
    async with http(server, "jd_" + "0" * 24 + "_" + "A" * 43) as client:
        assert (await client.post("/logout")).status_code == 200
    async with http(server) as client:
        assert (await client.post("/logout")).status_code == 200
    assert await db.audit.count_documents({"action": "logout"}) == 0


# -- sessions ------------------------------------------------------------------

async def test_sessions_are_listed_with_the_current_one_and_one_can_be_ended(server, other, team_clients):
    first = await login(server, "executor", "exec-pw")
    second = await login(server, "executor", "exec-pw")
    async with http(server, first) as client:
        listed = (await client.get("/session")).json()["data"]
        mine = {s["_id"]: s for s in listed}
        assert len(listed) >= 2 and all(s["user"] == "executor" for s in listed)
        [current] = [s for s in listed if s["current"]]
        assert first.startswith(f"jd_{current['_id']}_")
        assert all("hash" not in s and "token" not in s for s in listed)
        ended = tokens.parse(second)[0]
        assert str(ended) in mine and mine[str(ended)]["address"] == "127.0.0.1"
        assert (await client.delete(f"/session/{ended}")).status_code == 200
        assert str(ended) not in {s["_id"] for s in (await client.get("/session")).json()["data"]}
    await refused_within(other, second)
    # Another user's session: not found for a non-admin, ended by an admin.
    reader = await login(server, "reader", "read-pw")
    reader_id = tokens.parse(reader)[0]
    async with http(server, first) as client:
        assert (await client.delete(f"/session/{reader_id}")).status_code == 404
        assert (await client.get("/session", params={"user": "reader"})).status_code == 403
    admin = team_clients["admin"]
    assert str(reader_id) in {
        s["_id"] for s in (await admin.get("/session", params={"user": "reader"})).json()["data"]}
    assert (await admin.delete(f"/session/{reader_id}")).status_code == 200
    await refused_within(server, reader)


async def test_password_change_and_disable_end_every_session_and_api_token(server, other, team_clients, db):
    admin = team_clients["admin"]
    for change in ({"password": "new-pw"}, {"active": False}):
        session = await login(server, "executor", "exec-pw")
        async with http(server, session) as client:
            api = (await make_token(client, name=f"t-{len(change)}-{time.monotonic_ns()}"))["token"]
        assert (await admin.put("/user/executor", json=change)).status_code == 200
        for token in (session, api):
            await refused_within(other, token)
        assert await db.token.count_documents({"user": "executor"}) == 0
        # Back as it was, with its old password.
        assert (await admin.put("/user/executor", json={"active": True, "password": "exec-pw"})).status_code == 200


# -- API tokens ----------------------------------------------------------------

async def test_an_api_token_is_shown_once_stored_as_a_hash_and_acts_as_its_user(server, team_clients, db,
                                                                              job_classes):
    executor = team_clients["executor"]
    made = await make_token(executor, expires_in_days=30)
    assert set(made) >= {"_id", "name", "token", "read_only", "expires"}
    assert made["name"] == "nightly" and made["read_only"] is False
    expires = datetime.fromisoformat(made["expires"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=30))) < timedelta(minutes=1)
    secret = made["token"][-43:]
    stored = await db.token.find_one({"kind": "api"})
    assert secret not in repr(stored) and stored["hash"] == tokens.digest(secret)
    async with http(server, made["token"]) as script:
        assert (await script.get("/whoami")).json()["data"]["name"] == "executor"
        reply = await script.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False})
        assert reply.status_code == 200, reply.text
    listed = (await executor.get("/token")).json()["data"]
    assert [t["name"] for t in listed] == ["nightly"]
    assert listed[0]["last_used"] is not None and "token" not in listed[0] and "hash" not in listed[0]
    job = await db.queue.find_one({})
    assert job["enqueued"]["username"] == "executor"


async def test_revocation_takes_effect_at_once_on_every_server(server, other, team_clients, db):
    executor = team_clients["executor"]
    made = await make_token(executor)
    async with http(other, made["token"]) as there:
        assert (await there.get("/whoami")).status_code == 200
    assert (await executor.delete(f"/token/{made['_id']}")).status_code == 200
    assert await refused_within(other, made["token"]) < 1.0
    assert (await executor.get("/token")).json()["data"] == []
    actions = [e["action"] for e in await db.audit.find({"target": "executor"}).sort("at", 1).to_list()]
    assert actions[-2:] == ["token.create", "token.revoke"]


async def test_admins_list_and_revoke_anyones_tokens_and_others_may_not(team_clients):
    executor, reader, admin = team_clients["executor"], team_clients["reader"], team_clients["admin"]
    made = await make_token(executor)
    assert (await reader.get("/token", params={"user": "executor"})).status_code == 403
    assert (await reader.delete(f"/token/{made['_id']}")).status_code == 404
    listed = (await admin.get("/token", params={"user": "executor"})).json()["data"]
    assert [t["_id"] for t in listed] == [made["_id"]]
    assert (await admin.delete(f"/token/{made['_id']}")).status_code == 200
    assert (await executor.get("/token")).json()["data"] == []


async def test_token_names_are_unique_per_user_and_an_api_token_cannot_make_tokens(server, team_clients):
    executor = team_clients["executor"]
    made = await make_token(executor)
    reply = await executor.post("/token", json={"name": "nightly"})
    assert reply.status_code == 409 and "has a token named 'nightly'" in reply.json()["error"]
    assert (await team_clients["reader"].post("/token", json={"name": "nightly"})).status_code == 200
    async with http(server, made["token"]) as script:
        reply = await script.post("/token", json={"name": "child"})
        assert reply.status_code == 403 and "cannot make tokens" in reply.json()["error"]


async def test_an_expired_token_is_refused(server, team_clients, db):
    made = await make_token(team_clients["executor"], expires_in_days=1)
    async with http(server, made["token"]) as script:
        assert (await script.get("/whoami")).status_code == 200
        # A day later (the TTL index deletes it soon after; until then it is refused by its date).
        await db.token.update_one({"kind": "api"}, {"$set": {"expires": datetime.now(timezone.utc) - timedelta(seconds=1)}})
        db.changed("token")
        reply = await script.get("/whoami")
        assert reply.status_code == 401 and "expired" in reply.json()["error"]


@pytest.mark.parametrize("owner", ["admin", "executor"])
async def test_a_read_only_token_reads_what_its_user_may_and_changes_nothing(server, team_clients, db, owner,
                                                                             job_classes):
    user_client = team_clients[owner]
    job = (await user_client.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False})).json()["data"]
    made = await make_token(user_client, read_only=True)
    assert made["read_only"] is True
    before = (await db.queue.find({}).to_list(), await db.user.count_documents({}),
              await db.schedules.count_documents({}), await db.settings.find_one({"_id": "flow"}))
    async with http(server, made["token"]) as script:
        assert (await script.get(f"/job/{job}")).status_code == 200
        assert (await script.get("/job/queue")).json()["total_count"] == 1
        assert (await script.get("/whoami")).json()["data"]["name"] == owner
        writes = [await script.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False}),
                  await script.put(f"/job/kill/{job}"), await script.put(f"/job/remove/{job}"),
                  await script.delete(f"/job/{job}"),
                  await script.put("/job/pause", json={"qual_name": DUMMY, "wait": 0}),
                  await script.post("/schedule", json={"qual_name": DUMMY, "cron": "0 * * * *"}),
                  await script.post("/user", json={"name": "mallory", "password": "x"}),
                  await script.put("/user/reader", json={"active": False}),
                  await script.post("/token", json={"name": "wider"}),
                  await script.delete(f"/token/{made['_id']}")]
        assert [reply.status_code for reply in writes] == [403] * len(writes), [r.text for r in writes]
        if owner == "admin":  # the admin's reading rights stay
            assert (await script.get("/user")).status_code == 200
            assert (await script.get("/audit")).status_code == 200
    after = (await db.queue.find({}).to_list(), await db.user.count_documents({}),
             await db.schedules.count_documents({}), await db.settings.find_one({"_id": "flow"}))
    assert after == before
