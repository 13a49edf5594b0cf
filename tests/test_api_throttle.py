"""HTTP login throttling: concurrent guesses, and an attacker at another address."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
import pytest

from core.auth import Authenticator
from handlers.app import Server


class Frozen:
    """A clock that stands still, so that no backoff runs out during a test."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
async def delays() -> list[float]:
    return []


@pytest.fixture
async def frozen_server(config, db, delays) -> AsyncIterator[Server]:
    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    http = Server(config, db, auth=Authenticator(db, clock=Frozen(), sleep=sleep))
    await http.start()
    yield http
    await http.stop()


def from_address(server: Server, address: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 reaches the server)."""
    return httpx.AsyncClient(base_url=server.url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


async def test_parallel_guesses_get_at_most_free_failures_verifications(frozen_server, admin):
    auth = frozen_server.auth
    async with from_address(frozen_server, "127.0.0.1") as http:
        replies = await asyncio.gather(*(http.get("/whoami", auth=("admin", f"guess{i}"))
                                         for i in range(40)))
    codes = [reply.status_code for reply in replies]
    assert codes.count(401) <= auth.throttle.free_failures
    assert codes.count(429) == 40 - codes.count(401)
    assert auth.stats["verifications"] == codes.count(401)
    refused = next(reply for reply in replies if reply.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many failed logins" in refused.json()["error"]


async def test_attacker_at_another_address_leaves_the_victim_in(frozen_server, admin, delays):
    auth = frozen_server.auth
    async with (from_address(frozen_server, "127.0.0.2") as victim,
                from_address(frozen_server, "127.0.0.3") as attacker):
        assert (await victim.get("/whoami", auth=("admin", "hans"))).status_code == 200
        for _ in range(auth.throttle.free_failures):
            assert (await attacker.get("/whoami", auth=("admin", "guess"))).status_code == 401
        assert (await attacker.get("/whoami", auth=("admin", "hans"))).status_code == 429
        verified = auth.stats["verifications"]
        assert (await victim.get("/whoami", auth=("admin", "hans"))).status_code == 200
        assert auth.stats["verifications"] == verified and delays == []  # the cached credential, at once
        auth.forget("admin")
        assert (await victim.post("/login", auth=("admin", "hans"))).status_code == 200
        assert auth.stats["verifications"] == verified + 1
        assert delays == [auth.throttle.delay_step]  # slowed down, not refused


async def test_a_scripts_first_parallel_requests_with_the_right_password_all_get_in(frozen_server, admin):
    # Counting attempts before verifying them must not refuse the right password sent in parallel.
    async with from_address(frozen_server, "127.0.0.1") as http:
        replies = await asyncio.gather(*(http.get("/whoami", auth=("admin", "hans")) for _ in range(20)))
    assert [reply.status_code for reply in replies] == [200] * 20
    assert frozen_server.auth.stats["verifications"] <= frozen_server.auth.throttle.free_failures
