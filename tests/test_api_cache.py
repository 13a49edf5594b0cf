"""Enqueue's short path: what it reads is cached (the user behind a credential, the registry entry), and
concurrent enqueues are written together; changes still count and every job is still checked and audited.

Changes made "in another process" go through a second client of the same
database (``other``), whose writes reach none of the server's caches: the
server hears of them from its hub's change stream, or, without one, re-reads
every entry once it is ``stale_seconds`` old.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from core import registry, users
from core.config import Config
from core.db import Database
from handlers.app import Server
from tests.conftest import SessionAuth, forget_package, make_package, wait_for

DUMMY = "jobs.example.DummyJob"
#: Within this many seconds a change made elsewhere must count, however loaded the machine
#: (the stream brings it in milliseconds, the server's entries would live a minute without it).
PROMPTLY = 5.0


@pytest.fixture
async def other(config: Config) -> AsyncIterator[Database]:
    """Another process's client of the test database: none of the server's caches hears its writes."""
    elsewhere = Database.connect(config.mongo_url, config.database)
    yield elsewhere
    await elsewhere.close()


async def started(config: Config, db: Database, *, stale_seconds: float) -> Server:
    server = Server(config, db)
    await server.start()
    server.user_cache.stale_seconds = server.registry_cache.stale_seconds = stale_seconds
    return server


@pytest.fixture
async def deck(config: Config, db: Database, team: dict[str, Any], job_classes: Any) -> AsyncIterator[Server]:
    """A server whose cached entries outlive every test unless its change stream drops them."""
    server = await started(config, db, stale_seconds=60)
    assert server.hub.live
    yield server
    await server.stop()


@pytest.fixture
async def streamless(config: Config, db: Database, team: dict[str, Any],
                     job_classes: Any) -> AsyncIterator[Server]:
    """A server without change streams (as against a standalone mongod): entries live 0.5 s."""
    db.change_streams = False
    server = await started(config, db, stale_seconds=0.5)
    assert not server.hub.live
    yield server
    await server.stop()


def client(server: Server, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30, **kwargs)


def bearer(server: Server, user: dict[str, Any]) -> SessionAuth:
    return SessionAuth(server, user)


async def enqueue(http: httpx.AsyncClient, qual_name: str = DUMMY) -> httpx.Response:
    return await http.post("/job", json={"qual_name": qual_name, "follow": False})


async def answers(http: httpx.AsyncClient, method: str, path: str, status: int, timeout: float = PROMPTLY,
                  **kwargs: Any) -> httpx.Response:
    """The reply once ``method path`` answers ``status`` (asked again until ``timeout`` seconds)."""
    async def reply() -> httpx.Response | None:
        answer = await http.request(method, path, **kwargs)
        return answer if answer.status_code == status else None
    return await wait_for(reply, timeout=timeout, interval=0.05, message=f"{method} {path} to answer {status}")


async def test_cached_enqueues_read_neither_the_user_nor_the_registry_and_are_all_audited(deck, db):
    async with client(deck, auth=("executor", "exec-pw")) as http:
        for _ in range(5):
            assert (await enqueue(http)).status_code == 200
    assert deck.user_cache.stats == {"hits": 4, "reads": 1}
    assert deck.registry_cache.stats == {"hits": 4, "reads": 1}
    assert deck.auth.stats == {"verifications": 1, "cache_hits": 4}
    jobs = {str(job["_id"]) async for job in db.queue.find({}, {"_id": 1})}
    audited = {entry["target"] async for entry in db.audit.find({"action": "job.enqueue", "actor": "executor"})}
    assert len(jobs) == 5 and audited == jobs


async def test_a_user_disabled_in_another_process_is_refused_promptly(deck, other):
    async with client(deck, auth=("executor", "exec-pw")) as http:
        assert (await enqueue(http)).status_code == 200
        await users.set_active(other, "executor", False, actor="t")
        reply = await answers(http, "POST", "/job", 401, json={"qual_name": DUMMY, "follow": False})
    assert "disabled" in reply.json()["error"]


async def test_a_password_changed_in_another_process_is_refused_promptly(deck, other, team):
    async with client(deck, auth=("executor", "exec-pw")) as http, client(deck, auth=bearer(deck, team["executor"])) as token:
        assert (await http.get("/whoami")).status_code == 200
        assert (await token.get("/whoami")).status_code == 200
        await users.set_password(other, "executor", "a-new-password", actor="t")
        await answers(http, "GET", "/whoami", 401)
        assert "password change" in (await answers(token, "GET", "/whoami", 401)).json()["error"]
        assert (await http.get("/whoami", auth=("executor", "a-new-password"))).status_code == 200


async def test_a_permission_revoked_in_another_process_stops_enqueue_promptly(deck, other, team):
    async with client(deck, auth=bearer(deck, team["executor"])) as http:
        assert (await enqueue(http)).status_code == 200
        await users.change_access(other, "executor", revoke=["job:jobs.example.*:x"], actor="t")
        reply = await answers(http, "POST", "/job", 403, json={"qual_name": DUMMY, "follow": False})
    assert "may not execute" in reply.json()["error"]


async def test_a_user_removed_in_another_process_is_refused_promptly(deck, other, team):
    async with client(deck, auth=bearer(deck, team["reader"])) as http:
        assert (await http.get("/whoami")).status_code == 200
        await users.remove(other, "reader", actor="t")
        reply = await answers(http, "GET", "/whoami", 401)
    assert "removed" in reply.json()["error"]


async def make_unavailable(db: Database, classes: dict[str, Any]) -> None:
    """Make ``classes`` unavailable the way it happens: their last provider offers them, then withdraws."""
    provider = registry.Provider("elsewhere:1:aa", "worker", "elsewhere")
    await registry.sync(db, classes, provider=provider)
    await registry.withdraw(db, provider.id)


async def test_a_job_class_invalidated_in_another_process_is_refused_then_accepted_again(deck, other, team,
                                                                                        job_classes):
    async with client(deck, auth=bearer(deck, team["admin"])) as http:
        assert (await enqueue(http)).status_code == 200
        await make_unavailable(other, job_classes)
        reply = await answers(http, "POST", "/job", 404, json={"qual_name": DUMMY, "follow": False})
        assert "no longer available" in reply.json()["error"]
        await registry.sync(other, job_classes)
        await answers(http, "POST", "/job", 200, json={"qual_name": DUMMY, "follow": False})


async def test_a_job_class_removed_in_another_process_is_refused(deck, other, team):
    async with client(deck, auth=bearer(deck, team["admin"])) as http:
        assert (await enqueue(http)).status_code == 200
        await other.registry.delete_one({"_id": DUMMY})
        reply = await answers(http, "POST", "/job", 404, json={"qual_name": DUMMY, "follow": False})
    assert "unknown job" in reply.json()["error"]


async def test_a_schema_changed_in_another_process_is_checked_against_promptly(deck, other, team):
    async with client(deck, auth=bearer(deck, team["admin"])) as http:
        assert (await http.post("/job", json={"qual_name": DUMMY, "args": {"sleep": 0}, "follow": False})
                ).status_code == 200
        await other.registry.update_one({"_id": DUMMY}, {"$set": {"schema": {"params": [], "extra": False}}})
        reply = await answers(http, "POST", "/job", 400, json={"qual_name": DUMMY, "args": {"sleep": 0},
                                                              "follow": False})
    assert "unknown 'sleep'" in reply.json()["error"]


async def test_without_change_streams_a_change_elsewhere_counts_within_stale_seconds(streamless, other):
    async with client(streamless, auth=("executor", "exec-pw")) as http:
        assert (await enqueue(http)).status_code == 200
        await users.set_active(other, "executor", False, actor="t")
        await make_unavailable(other, registry.discover())
        changed = time.monotonic()
        await answers(http, "POST", "/job", 401, timeout=0.5 + 2.0, json={"qual_name": DUMMY, "follow": False})
        assert time.monotonic() - changed < 0.5 + 2.0
    async with client(streamless, auth=("admin", "hans")) as http:
        assert (await enqueue(http)).status_code == 404


async def test_a_change_made_in_this_process_counts_at_once_even_without_a_stream(streamless, db, team):
    streamless.user_cache.stale_seconds = streamless.registry_cache.stale_seconds = 60
    async with client(streamless, auth=bearer(streamless, team["executor"])) as http:
        assert (await enqueue(http)).status_code == 200
        await users.change_access(db, "executor", revoke=["job:jobs.example.*:x"], actor="t")
        assert (await enqueue(http)).status_code == 403
        await users.set_active(db, "executor", False, actor="t")
        assert (await enqueue(http)).status_code == 401
    async with client(streamless, auth=bearer(streamless, team["admin"])) as http:
        assert (await enqueue(http)).status_code == 200
        await make_unavailable(db, registry.discover())
        assert (await enqueue(http)).status_code == 404


@pytest.fixture
async def unique_job(db: Database, job_classes: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The qual_name of a registered ``unique`` job class from a temporary job package."""
    package = make_package(tmp_path, monkeypatch, {"once": '''
        from jobs import Job


        class OnlyOnce(Job):
            """At most one live job per argument set."""

            unique = True

            def execute(self, key: str = "a") -> None:
                return None
    '''})
    await registry.sync(db, registry.discover([package]))
    yield f"{package}.once.OnlyOnce"
    forget_package(package)


async def test_concurrent_enqueues_written_together_are_each_checked_and_audited(deck, db, team, unique_job):
    async with client(deck, auth=bearer(deck, team["admin"])) as http:
        def post(**body: Any) -> Any:
            return http.post("/job", json={"qual_name": unique_job, "follow": False, **body})
        same = await asyncio.gather(*(post(args={"key": "k"}) for _ in range(8)))
        mixed = await asyncio.gather(*(post(args={"key": f"k{n}"}) for n in range(6)),
                                     post(args={"key": 1}), post(args={"nope": "x"}))

    winners = [reply for reply in same if reply.status_code == 200]
    assert len(winners) == 1 and sorted(reply.status_code for reply in same) == [200] + [409] * 7
    assert {reply.json()["details"]["job_id"] for reply in same if reply.status_code == 409} == {
        winners[0].json()["data"]}
    assert [reply.status_code for reply in mixed] == [200] * 6 + [400, 400]
    enqueued = {reply.json()["data"] for reply in winners + mixed[:6]}
    audited = {entry["target"] async for entry in db.audit.find({"action": "job.enqueue"})}
    assert audited == enqueued and await db.queue.count_documents({}) == 7
