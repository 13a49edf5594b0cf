"""Cross-site requests: a foreign page cannot act with the victim's login cookie.

A page on another port of the same host is same-site, so ``SameSite=Lax``
sends the cookie along; what stops it is the body type (415) and the
``Origin`` check (403). Plain HTTP here; ``test_browser`` does the same from
a real page in Chromium.
"""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator

import httpx
import pytest

from core import queue
from handlers.app import Server
from handlers.base import COOKIE

DUMMY = "jobs.example.DummyJob"
FOREIGN = "http://127.0.0.1:8000"
PARTNER = "https://dashboard.example"
ENQUEUE = {"qual_name": DUMMY, "follow": False}


@pytest.fixture
async def deck(config, db, admin, job_classes) -> AsyncIterator[dict[str, Any]]:
    """A server that trusts ``PARTNER`` (cors_origins), and a cookie of a logged-in admin."""
    server = Server(dataclasses.replace(config, cors_origins=[PARTNER]), db)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url) as http:
        login = await http.post("/login", json={"username": "admin", "password": "hans"})
        assert login.status_code == 200
        yield {"server": server, "cookie": login.cookies[COOKIE], "own": server.url.rsplit("/api/v1", 1)[0]}
    await server.stop()


async def send(deck: dict[str, Any], method: str, path: str, *, cookie: bool = True,
               **kwargs: Any) -> httpx.Response:
    cookies = {COOKIE: deck["cookie"]} if cookie else None
    async with httpx.AsyncClient(base_url=deck["server"].url, cookies=cookies) as http:
        return await http.request(method, path, **kwargs)


async def test_a_foreign_origin_cannot_enqueue_with_the_cookie(deck, db):
    reply = await send(deck, "POST", "/job", json=ENQUEUE, headers={"Origin": FOREIGN})
    assert reply.status_code == 403
    assert f"cross-site request from origin '{FOREIGN}' refused" in reply.json()["error"]
    assert await db.queue.count_documents({}) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_a_form_or_no_cors_fetch_can_send_is_refused_before_anything_is_done(deck, db, content_type):
    # The landed code read a text/plain body starting with "{" as JSON and enqueued.
    reply = await send(deck, "POST", "/job", content=b'{"qual_name": "jobs.example.DummyJob", "follow": false}',
                       headers={"Content-Type": content_type, "Origin": deck["own"]})
    assert reply.status_code == 415
    assert "must be sent as application/json" in reply.json()["error"]
    assert await db.queue.count_documents({}) == 0


async def test_a_cookie_request_that_does_not_say_where_it_comes_from_is_refused(deck, db):
    reply = await send(deck, "POST", "/job", json=ENQUEUE)
    assert reply.status_code == 403 and "must send Origin" in reply.json()["error"]
    assert await db.queue.count_documents({}) == 0


@pytest.mark.parametrize("site", ["same-site", "cross-site"])
async def test_sec_fetch_site_other_than_same_origin_is_refused(deck, db, site):
    reply = await send(deck, "PUT", "/job/kill/5f6252b42e84fa29038a3e3f", headers={"Sec-Fetch-Site": site})
    assert reply.status_code == 403 and f"Sec-Fetch-Site: {site}" in reply.json()["error"]


@pytest.mark.parametrize("headers", [{"Origin": "own"}, {"Origin": PARTNER}, {"Sec-Fetch-Site": "same-origin"}])
async def test_the_services_own_pages_and_cors_origins_may_use_the_cookie(deck, db, headers):
    headers = {key: deck["own"] if value == "own" else value for key, value in headers.items()}
    reply = await send(deck, "POST", "/job", json=ENQUEUE, headers=headers)
    assert reply.status_code == 200, reply.text
    job = await queue.get(db, reply.json()["data"], user=queue.operator("test"))
    assert job["enqueued"]["username"] == "admin"


async def test_reads_with_the_cookie_need_no_origin(deck):
    assert (await send(deck, "GET", "/whoami")).status_code == 200


async def test_basic_auth_from_a_foreign_page_is_refused_too(deck, db):
    # A browser re-sends Basic credentials it has cached for the service by itself.
    reply = await send(deck, "POST", "/job", cookie=False, json=ENQUEUE, auth=("admin", "hans"),
                       headers={"Origin": FOREIGN})
    assert reply.status_code == 403
    assert await db.queue.count_documents({}) == 0


async def test_scripts_with_basic_auth_and_no_origin_work_as_before(deck, db):
    reply = await send(deck, "POST", "/job", cookie=False, json=ENQUEUE, auth=("admin", "hans"))
    assert reply.status_code == 200


@pytest.mark.parametrize("path", ["/login", "/logout"])
async def test_login_and_logout_refuse_a_foreign_form(deck, path):
    reply = await send(deck, "POST", path, cookie=False, data={"username": "admin", "password": "hans"},
                       headers={"Origin": FOREIGN})
    assert reply.status_code == 403
    assert COOKIE not in reply.cookies


async def test_a_plain_html_form_on_the_services_own_origin_may_log_in(deck):
    reply = await send(deck, "POST", "/login", cookie=False, data={"username": "admin", "password": "hans"},
                       headers={"Origin": deck["own"]})
    assert reply.status_code == 200 and reply.cookies[COOKIE]


async def test_cookie_only_login_leaves_the_token_out_of_the_reply(deck):
    reply = await send(deck, "POST", "/login", cookie=False,
                       json={"username": "admin", "password": "hans", "cookie_only": True})
    assert reply.status_code == 200
    assert "token" not in reply.json()["data"] and reply.json()["data"]["name"] == "admin"
    async with httpx.AsyncClient(base_url=deck["server"].url, cookies={COOKIE: reply.cookies[COOKIE]}) as http:
        assert (await http.get("/whoami")).json()["data"]["name"] == "admin"


async def test_every_reply_forbids_content_sniffing(deck):
    for reply in (await send(deck, "GET", "/health"), await send(deck, "GET", "/nope"),
                  await send(deck, "GET", "/whoami")):
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
