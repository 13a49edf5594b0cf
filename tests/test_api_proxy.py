"""Behind a reverse proxy: the client's address and protocol from a trusted peer's headers, never another's.

The server trusts ``127.0.0.1`` (the proxy); connections from ``127.0.0.2``
stand for a client reaching the server directly. Throttle tests run on a
clock that stands still and a sleep that only records, as in ``test_api_throttle``.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import pytest
from bson import ObjectId

from core.auth import Authenticator
from handlers.app import Server
from handlers.base import COOKIE

PROXY = "127.0.0.1"
DIRECT = "127.0.0.2"  # a peer not in trusted_proxies
ENQUEUE = {"qual_name": "jobs.example.DummyJob", "follow": False}

Start = Callable[..., Awaitable[Server]]


class Frozen:
    """A clock that stands still, so that no backoff runs out during a test."""

    def __call__(self) -> float:
        return 1000.0


@pytest.fixture
async def start(config, db) -> AsyncIterator[Start]:
    """``await start(trusted_proxies=[...], **config changes)``: a server on a frozen clock, stopped at teardown."""
    started: list[Server] = []

    async def sleep(seconds: float) -> None:
        pass

    async def start_server(trusted_proxies: list[str], **changes: Any) -> Server:
        auth = Authenticator(db, clock=Frozen(), sleep=sleep)
        server = Server(dataclasses.replace(config, trusted_proxies=trusted_proxies, **changes), db, auth=auth)
        await server.start()
        started.append(server)
        return server

    yield start_server
    for server in started:
        await server.stop()


def from_address(server: Server, address: str, **kwargs: Any) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 reaches the server)."""
    return httpx.AsyncClient(base_url=server.url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=address), **kwargs)


async def bearer(server: Server, name: str = "admin") -> dict[str, str]:
    """The header of a token of user ``name``, as ``POST /login`` hands out."""
    token, _ = await server.auth.issue_token(await server.db.user.find_one({"name": name}))
    return {"Authorization": f"Bearer {token}"}


async def enqueued_from(http: httpx.AsyncClient, db, headers: Any) -> str:
    """Enqueue a job with ``headers`` and return its ``enqueued.hostname``."""
    reply = await http.post("/job", json=ENQUEUE, headers=headers)
    assert reply.status_code == 200, reply.text
    job = await db.queue.find_one({"_id": ObjectId(reply.json()["data"])})
    return job["enqueued"]["hostname"]


async def failed_login_addresses(db) -> list[str]:
    return [entry["detail"]["address"] async for entry in db.audit.find({"action": "login.failed"}).sort("at", 1)]


# --- From a peer that is not a trusted proxy ------------------------------------


async def test_forwarded_headers_from_an_untrusted_peer_do_not_move_the_throttle(start, db, admin):
    server = await start([PROXY])
    free = server.auth.throttle.free_failures
    async with from_address(server, DIRECT) as attacker:
        for i in range(free):
            spoofed = {"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.1.0.{i}"}
            reply = await attacker.get("/whoami", auth=("admin", "guess"), headers=spoofed)
            assert reply.status_code == 401
        reply = await attacker.post("/login", json={"username": "admin", "password": "hans"},
                                    headers={"X-Forwarded-For": "10.0.0.99"})
    assert reply.status_code == 429
    assert f"from {DIRECT}" in reply.json()["error"]
    assert await failed_login_addresses(db) == [DIRECT] * free
    async with from_address(server, PROXY) as proxy:
        # The proxy's other clients are not held up; the attacker behind it is.
        reply = await proxy.get("/whoami", auth=("admin", "hans"), headers={"X-Forwarded-For": "10.0.0.99"})
        assert reply.status_code == 200
        reply = await proxy.get("/whoami", auth=("admin", "hans"), headers={"X-Forwarded-For": DIRECT})
        assert reply.status_code == 429 and f"from {DIRECT}" in reply.json()["error"]


async def test_forwarded_headers_from_an_untrusted_peer_are_not_the_enqueued_hostname(start, db, admin,
                                                                                       job_classes):
    server = await start([PROXY])
    async with from_address(server, DIRECT, headers=await bearer(server)) as http:
        assert await enqueued_from(http, db, {"X-Forwarded-For": "1.2.3.4"}) == DIRECT
        assert await enqueued_from(http, db, {"X-Real-IP": "1.2.3.4"}) == DIRECT
    async with from_address(server, PROXY, headers=await bearer(server)) as http:
        assert await enqueued_from(http, db, {"X-Forwarded-For": "1.2.3.4"}) == "1.2.3.4"


# --- Through a trusted proxy ------------------------------------------------------


async def test_failed_logins_through_the_proxy_throttle_the_forwarded_client_only(start, db, admin, caplog):
    caplog.set_level(logging.INFO, "tornado.access")
    server = await start(["127.0.0.1/32"])
    free = server.auth.throttle.free_failures
    async with from_address(server, PROXY) as proxy:
        for _ in range(free):
            reply = await proxy.post("/login", json={"username": "admin", "password": "guess"},
                                     headers={"X-Forwarded-For": "1.2.3.4"})
            assert reply.status_code == 401
        refused = await proxy.get("/whoami", auth=("admin", "hans"), headers={"X-Forwarded-For": "1.2.3.4"})
        assert refused.status_code == 429
        assert "from 1.2.3.4" in refused.json()["error"]
        other = await proxy.post("/login", json={"username": "admin", "password": "hans"},
                                 headers={"X-Forwarded-For": "5.6.7.8"})
        assert other.status_code == 200, other.text
        assert (await proxy.get("/whoami", auth=("admin", "hans"))).status_code == 200  # no header: the proxy
        assert (await proxy.get("/whoami", auth=("admin", "hans"),
                                headers={"X-Real-IP": "9.9.9.9"})).status_code == 200
    assert await failed_login_addresses(db) == ["1.2.3.4"] * free
    access = [record.getMessage() for record in caplog.records if record.name == "tornado.access"]
    assert "429 GET /api/v1/whoami (1.2.3.4)" in "\n".join(access)  # the client, not the proxy


async def test_enqueued_hostname_is_the_client_the_proxy_forwarded(start, db, admin, job_classes):
    server = await start([PROXY])
    async with from_address(server, PROXY, headers=await bearer(server)) as http:
        assert await enqueued_from(http, db, {"X-Forwarded-For": "1.2.3.4"}) == "1.2.3.4"
        assert await enqueued_from(http, db, {"X-Forwarded-For": "2001:DB8::1"}) == "2001:db8::1"
        assert await enqueued_from(http, db, {"X-Real-IP": "9.8.7.6"}) == "9.8.7.6"
        # X-Forwarded-For wins over X-Real-IP; without either the proxy is the client.
        assert await enqueued_from(http, db, {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "9.8.7.6"}) == "1.2.3.4"
        assert await enqueued_from(http, db, {}) == PROXY


async def test_a_restarted_job_records_the_client_that_restarted_it(start, db, admin, job_classes):
    server = await start([PROXY])
    async with from_address(server, PROXY, headers=await bearer(server)) as http:
        reply = await http.post("/job", json=ENQUEUE, headers={"X-Forwarded-For": "1.2.3.4"})
        old = reply.json()["data"]
        assert (await http.put(f"/job/kill/{old}")).status_code == 200
        reply = await http.put(f"/job/restart/{old}", json={"follow": False}, headers={"X-Forwarded-For": "5.6.7.8"})
        assert reply.status_code == 200, reply.text
    new = await db.queue.find_one({"_id": ObjectId(reply.json()["data"])})
    assert new["enqueued"]["hostname"] == "5.6.7.8" and str(new["enqueued"]["parent_id"]) == old


#: (X-Forwarded-For as the last proxy sends it, the client) with trusted proxies 127.0.0.1, 10.0.0.0/8, 2001:db8::/32.
HOPS = [
    ("1.2.3.4, 10.0.0.5", "1.2.3.4"),
    ("1.2.3.4, 10.9.8.7, 10.0.0.5", "1.2.3.4"),
    ("6.6.6.6, 1.2.3.4, 10.0.0.5", "1.2.3.4"),  # what the client wrote itself is not believed
    ("1.2.3.4, 5.6.7.8, 10.0.0.5", "5.6.7.8"),  # past an untrusted hop nothing is believed
    ("10.0.0.7, 10.0.0.5", "10.0.0.7"),  # trusted all the way: the left-most
    ("1.2.3.4, 2001:db8::5", "1.2.3.4"),
    ("1.2.3.4, ::ffff:10.0.0.5", "1.2.3.4"),  # IPv4-mapped counts as IPv4
    ("1.2.3.4 ,10.0.0.5", "1.2.3.4"),
]


async def test_a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_address(start, db, admin, job_classes):
    server = await start([PROXY, "10.0.0.0/8", "2001:db8::/32"])
    async with from_address(server, PROXY, headers=await bearer(server)) as http:
        for chain, client in HOPS:
            assert await enqueued_from(http, db, {"X-Forwarded-For": chain}) == client, chain
        # Two X-Forwarded-For lines are one list, in order.
        two_lines = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "10.0.0.5")]
        assert await enqueued_from(http, db, two_lines) == "1.2.3.4"


#: (headers, the client) with trusted proxies 127.0.0.1 and 10.0.0.0/8: nothing past a malformed entry is read.
MALFORMED = [
    ({"X-Forwarded-For": "garbage"}, PROXY),
    ({"X-Forwarded-For": "<script>, 1.2.3.4"}, "1.2.3.4"),
    ({"X-Forwarded-For": "1.2.3.4, unknown, 10.0.0.5"}, "10.0.0.5"),
    ({"X-Forwarded-For": "1.2.3.4,,10.0.0.5"}, "10.0.0.5"),
    ({"X-Forwarded-For": "1.2.3.4:5678"}, PROXY),
    ({"X-Forwarded-For": "[2001:db8::1]"}, PROXY),
    ({"X-Forwarded-For": "1.2.3.4/8"}, PROXY),
    ({"X-Forwarded-For": "999.1.1.1"}, PROXY),
    ({"X-Forwarded-For": "::1%<b>any text</b>"}, PROXY),  # an IPv6 zone may hold almost anything
    ({"X-Forwarded-For": "fe80::1%eth0, 10.0.0.5"}, "10.0.0.5"),
    ({"X-Forwarded-For": b"1.2.3.4\xff"}, PROXY),
    ({"X-Forwarded-For": "x" * 4000}, PROXY),
    ({"X-Forwarded-For": ""}, PROXY),
    ({"X-Forwarded-For": "", "X-Real-IP": "1.2.3.4"}, "1.2.3.4"),
    ({"X-Real-IP": "not an address"}, PROXY),
    ({"X-Real-IP": "1.2.3.4, 5.6.7.8"}, PROXY),
    ({"X-Real-IP": "fe80::1%eth0"}, PROXY),
]


async def test_malformed_forwarded_headers_stop_at_the_last_good_address(start, db, admin, job_classes):
    server = await start([PROXY, "10.0.0.0/8"])
    async with from_address(server, PROXY, headers=await bearer(server)) as http:
        for headers, client in MALFORMED:
            assert await enqueued_from(http, db, headers) == client, headers
        # The throttle and the audit trail never get anything but an address either.
        for chain in ("garbage", "1.2.3.4, unknown, 10.0.0.5"):
            reply = await http.post("/login", json={"username": "admin", "password": "guess"},
                                    headers={"X-Forwarded-For": chain})
            assert reply.status_code == 401
    assert await failed_login_addresses(db) == [PROXY, "10.0.0.5"]


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_an_ipv6_proxy_is_trusted_by_its_address(start, db, admin, job_classes):
    try:
        server = await start(["::1"], host="::1")
    except OSError:
        pytest.skip("cannot listen on ::1")
    async with httpx.AsyncClient(base_url=f"http://[::1]:{server.port}/api/v1", timeout=30,
                                 headers=await bearer(server)) as http:
        assert await enqueued_from(http, db, {"X-Forwarded-For": "1.2.3.4, ::1"}) == "1.2.3.4"
        assert await enqueued_from(http, db, {}) == "::1"


# --- The protocol: the cookie's Secure flag and the own origin ----------------------


async def login_cookie(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    reply = await http.post("/login", json={"username": "admin", "password": "hans"}, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.headers["Set-Cookie"]


#: (peer, X-Forwarded-Proto, whether the login cookie is Secure) with trusted proxy 127.0.0.1.
PROTOCOLS = [
    (PROXY, "https", True),
    (PROXY, "HTTPS", True),
    (PROXY, "https, http", True),  # the first: what the outermost proxy saw
    (PROXY, "http", False),
    (PROXY, "ftp", False),
    (PROXY, None, False),
    (DIRECT, "https", False),
]


async def test_forwarded_https_from_the_proxy_makes_the_login_cookie_secure(start, admin):
    server = await start([PROXY])
    for peer, proto, secure in PROTOCOLS:
        async with from_address(server, peer) as http:
            reply = await http.post("/login", json={"username": "admin", "password": "hans"},
                                    headers={"X-Forwarded-Proto": proto} if proto else {})
        assert reply.status_code == 200, reply.text
        cookie = reply.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert ("; Secure" in cookie) is secure, (peer, proto, cookie)


async def test_forwarded_https_makes_the_https_origin_the_services_own(start, db, admin, job_classes):
    server = await start([PROXY])
    # What nginx sends: the browser's Host, its Origin and X-Forwarded-Proto https.
    headers = {"Host": "jobs.example", "Origin": "https://jobs.example", "X-Forwarded-For": "1.2.3.4"}
    async with from_address(server, PROXY) as proxy:
        cookie = (await proxy.post("/login", json={"username": "admin", "password": "hans"},
                                   headers={"X-Forwarded-Proto": "https"})).cookies[COOKIE]
    async with from_address(server, PROXY, cookies={COOKIE: cookie}) as proxy:
        accepted = await proxy.post("/job", json=ENQUEUE, headers={**headers, "X-Forwarded-Proto": "https"})
        assert accepted.status_code == 200, accepted.text
        refused = await proxy.post("/job", json=ENQUEUE, headers=headers)  # plain http: not the same origin
        assert refused.status_code == 403
    async with from_address(server, DIRECT, cookies={COOKIE: cookie}) as direct:
        spoofed = await direct.post("/job", json=ENQUEUE, headers={**headers, "X-Forwarded-Proto": "https"})
        assert spoofed.status_code == 403
        assert "cross-site request from origin 'https://jobs.example' refused" in spoofed.json()["error"]
    jobs = await db.queue.find({}, {"enqueued": 1}).to_list()
    assert [job["enqueued"]["hostname"] for job in jobs] == ["1.2.3.4"]
