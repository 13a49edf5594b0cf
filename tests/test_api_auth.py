"""HTTP authentication: Basic, Bearer, cookie, throttling; envelopes and status codes."""
from __future__ import annotations

import json
import logging
import re

import httpx
import pytest

from core import users
from core.auth import Authenticator
from core.config import Config
from core.db import Database
from handlers.app import PREFIXES, ROUTES, Server
from handlers.openapi import path_template

PUBLIC = {"/health", "/login", "/logout"}
PROTECTED = [path_template(path).replace("{id}", "5f6252b42e84fa29038a3e3f")
             for path, _ in ROUTES if path not in PUBLIC]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def base(prefix: str, server) -> str:
    return f"http://127.0.0.1:{server.port}{prefix}"


def assert_envelope(reply: httpx.Response, code: int) -> dict:
    body = reply.json()
    assert reply.status_code == code, body
    assert body["code"] == code
    assert re.fullmatch(r"[0-9a-f]{24}", body["_id"])
    assert body["_id"] == reply.headers["X-Request-Id"]
    assert ISO_UTC.match(body["timestamp"])
    assert ("data" in body) == (code < 400) and ("error" in body) == (code >= 400)
    return body


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_health_needs_no_authentication(server, prefix):
    async with httpx.AsyncClient() as http:
        reply = await http.get(base(prefix, server) + "/health")
    body = assert_envelope(reply, 200)
    assert body["data"]["database"] == "ok"
    assert body["message"] == "OK"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("path", PROTECTED)
async def test_every_other_route_refuses_anonymous_callers(server, prefix, path):
    async with httpx.AsyncClient() as http:
        reply = await http.get(base(prefix, server) + path)
    body = assert_envelope(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Basic")
    assert "authentication required" in body["error"]


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_whoami_with_basic_auth_on_both_prefixes(server, admin, prefix):
    async with httpx.AsyncClient() as http:
        reply = await http.get(base(prefix, server) + "/whoami", auth=("admin", "hans"))
    body = assert_envelope(reply, 200)
    assert body["data"]["name"] == "admin" and body["data"]["admin"] is True
    assert "password" not in body["data"]
    assert ISO_UTC.match(body["data"]["created"])


@pytest.mark.parametrize("name, password", [("admin", "wrong"), ("ghost", "hans"), ("admin", "")])
async def test_wrong_credentials_get_401_with_basic_challenge(client, admin, name, password):
    reply = await client.get("/whoami", auth=(name, password))
    body = assert_envelope(reply, 401)
    assert body["error"] == "wrong user name or password"
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="jobdeck", charset="UTF-8"'


async def test_disabled_user_gets_401_saying_so(client, db, admin):
    await users.add(db, "bob", "pw", actor="test")
    await users.set_active(db, "bob", False, actor="test")
    reply = await client.get("/whoami", auth=("bob", "pw"))
    assert "disabled" in assert_envelope(reply, 401)["error"]


@pytest.mark.parametrize("header, message", [
    ("Basic !!!notbase64", "malformed Basic credentials"),
    ("Basic " + "bm9jb2xvbg==", "malformed Basic credentials"),  # "nocolon"
    ("Digest abc", "unsupported Authorization scheme 'Digest'"),
    ("Bearer not.atoken", "invalid token"),
])
async def test_malformed_authorization_headers_get_401(client, admin, header, message):
    reply = await client.get("/whoami", headers={"Authorization": header})
    assert message in assert_envelope(reply, 401)["error"]


@pytest.mark.parametrize("name, value", [
    (b"Authorization", "Bearer é".encode("utf-8")),
    (b"Authorization", "Bearer abc.déf".encode("utf-8")),
    (b"Authorization", "Bearer abc.d\xe9f".encode("latin-1")),
    (b"Cookie", "jobdeck_token=é.é".encode("utf-8")),
    (b"Authorization", "Basic é".encode("utf-8")),
])
async def test_non_ascii_credentials_get_401_not_500(client, name, value):
    reply = await client.get("/whoami", headers=[(name, value)])
    assert_envelope(reply, 401)


async def test_password_no_user_can_have_gets_401_not_500(client, admin):
    reply = await client.post("/login", json={"username": "admin", "password": "x" * 5000})
    assert assert_envelope(reply, 401)["error"] == "wrong user name or password"
    for body in ({"username": "admin", "password": "\ud800"}, {"username": "\ud800", "password": "hans"}):
        # json.dumps escapes the lone surrogate, which JSON allows and no store can keep
        reply = await client.post("/login", content=json.dumps(body),
                                  headers={"Content-Type": "application/json"})
        assert "holds a lone surrogate escape" in assert_envelope(reply, 400)["error"]


async def test_login_returns_a_bearer_token(client, admin):
    reply = await client.post("/login", auth=("admin", "hans"))
    token = assert_envelope(reply, 200)["data"]["token"]
    client.cookies.clear()
    who = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert assert_envelope(who, 200)["data"]["name"] == "admin"


async def test_login_with_json_body_sets_a_cookie_that_authenticates(client, admin):
    reply = await client.post("/login", json={"username": "admin", "password": "hans"})
    assert_envelope(reply, 200)
    cookie = reply.headers["Set-Cookie"]
    assert "jobdeck_token=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    who = await client.get("/whoami")  # the client sends the cookie back
    assert assert_envelope(who, 200)["data"]["name"] == "admin"


async def test_login_with_wrong_password_sets_no_cookie(client, admin):
    reply = await client.post("/login", json={"username": "admin", "password": "nope"})
    assert_envelope(reply, 401)
    assert "Set-Cookie" not in reply.headers


async def test_login_without_credentials_is_400(client):
    reply = await client.post("/login", json={})
    assert "username" in assert_envelope(reply, 400)["error"]


async def test_cookie_stops_working_after_password_change(client, db, admin):
    await client.post("/login", auth=("admin", "hans"))
    await users.set_password(db, "admin", "new", actor="test")
    reply = await client.get("/whoami")
    assert "password change" in assert_envelope(reply, 401)["error"]  # one of the reasons it names


async def test_logout_clears_the_cookie(client, admin):
    await client.post("/login", auth=("admin", "hans"))
    assert_envelope(await client.post("/logout"), 200)
    assert_envelope(await client.get("/whoami"), 401)


async def test_password_change_elsewhere_invalidates_cached_basic_auth(client, db, admin):
    assert_envelope(await client.get("/whoami", auth=("admin", "hans")), 200)
    await users.set_password(db, "admin", "new", actor="cli")
    assert_envelope(await client.get("/whoami", auth=("admin", "hans")), 401)
    assert_envelope(await client.get("/whoami", auth=("admin", "new")), 200)


async def test_repeated_failures_are_throttled_with_429_and_retry_after(client, admin):
    # All from one address: the (user, address) pair is refused, even the right password
    # (test_api_throttle: another address gets in).
    for _ in range(5):
        assert_envelope(await client.get("/whoami", auth=("admin", "guess")), 401)
    reply = await client.get("/whoami", auth=("admin", "hans"))
    body = assert_envelope(reply, 429)
    assert "too many failed logins" in body["error"]
    assert int(reply.headers["Retry-After"]) >= 1


async def test_unknown_path_is_404_envelope(client):
    reply = await client.get("/no/such/thing")
    assert "/no/such/thing" in assert_envelope(reply, 404)["error"]


async def test_unknown_method_is_405_envelope(client, admin):
    reply = await client.delete("/whoami", auth=("admin", "hans"))
    assert "DELETE" in assert_envelope(reply, 405)["error"]


async def test_database_down_makes_health_503_and_keeps_the_driver_s_details_in_the_log(caplog):
    dead = Database.connect("mongodb://127.0.0.1:9/?directConnection=true", "x", timeout=0.5)
    server = Server(Config(port=0), dead, auth=Authenticator(dead))
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            reply = await http.get(server.url + "/health")
            assert assert_envelope(reply, 503)["error"] == "MongoDB did not answer ping within 2 s"
            reply = await http.get(server.url + "/whoami", auth=("admin", "hans"))
            assert assert_envelope(reply, 503)["error"] == "the database is unavailable; try again shortly"
        # The topology description (hosts, ports, the driver's errors) is in the log, not in replies.
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "127.0.0.1:9" in logged and "Topology" in logged
    finally:
        await server.stop()
        await dead.close()


async def test_an_unknown_path_is_logged_once_with_its_reason(client, caplog):
    caplog.set_level(logging.INFO)
    reply = await client.get("/no/such/route-4711")
    assert_envelope(reply, 404)
    lines = [record.getMessage() for record in caplog.records
             if "route-4711" in record.getMessage() and not record.name.startswith("httpx")]
    assert len(lines) == 1 and lines[0].startswith("404 GET /api/v1/no/such/route-4711") \
        and lines[0].endswith(": no such endpoint: /api/v1/no/such/route-4711"), lines
