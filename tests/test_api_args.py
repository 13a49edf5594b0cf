"""Arguments of the base handler: query string or JSON body, coercion, clear 400s, 413."""
from __future__ import annotations

import json
from datetime import datetime

import httpx
import pytest

from core import queue
from handlers.app import ROUTES, Server
from handlers.base import BaseHandler


class EchoHandler(BaseHandler):
    """Echoes its arguments, coerced, for every method (as real handlers read them)."""

    def _echo(self) -> None:
        self.reply({
            "n": self.arg("n", int, default=None),
            "x": self.arg("x", float, default=None),
            "flag": self.arg("flag", bool, default=None),
            "name": self.arg("name", default=None),
            "filter": self.arg("filter", dict, default=None),
            "tags": self.arg("tags", list, default=None),
            "since": self.arg("since", datetime, default=None),
        })

    get = post = put = delete = _echo


class RequiredHandler(BaseHandler):
    def get(self) -> None:
        self.reply(self.arg("needed", int))


class IdHandler(BaseHandler):
    def get(self, value: str) -> None:
        self.reply(queue.object_id(value))


@pytest.fixture
async def echo(config, db, admin):
    server = Server(config, db, routes=ROUTES + [("/echo", EchoHandler), ("/required", RequiredHandler),
                                                 (r"/id/([^/]+)", IdHandler)])
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans")) as http:
        yield http
    await server.stop()


async def test_query_string_values_are_coerced(echo):
    reply = await echo.get("/echo", params={"n": "3", "x": "2.5", "flag": "true", "name": "dummy",
                                            "filter": '{"state": "running"}', "tags": '["a", "b"]',
                                            "since": "2026-11-24T10:00:00Z"})
    assert reply.json()["data"] == {"n": 3, "x": 2.5, "flag": True, "name": "dummy",
                                    "filter": {"state": "running"}, "tags": ["a", "b"],
                                    "since": "2026-11-24T10:00:00.000Z"}


async def test_json_body_works_with_get_like_core4_clients_send(echo):
    reply = await echo.request("GET", "/echo", json={"n": 7, "flag": False, "filter": {"a": 1}})
    data = reply.json()["data"]
    assert (data["n"], data["flag"], data["filter"]) == (7, False, {"a": 1})


async def test_body_overrides_query_string(echo):
    reply = await echo.post("/echo?n=1&name=query", json={"n": 2})
    assert reply.json()["data"]["n"] == 2 and reply.json()["data"]["name"] == "query"


async def test_a_get_body_is_read_as_json_whatever_its_content_type(echo):
    reply = await echo.request("GET", "/echo", content=b'{"n": 5}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.json()["data"]["n"] == 5


async def test_a_get_form_body_is_understood(echo):
    reply = await echo.request("GET", "/echo", content=b"n=4&flag=0",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.json()["data"]["n"] == 4 and reply.json()["data"]["flag"] is False


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_a_body_that_changes_something_must_be_json(echo, method, content_type):
    # What a foreign page can send without a CORS preflight: text/plain, forms.
    headers = {"Content-Type": content_type} if content_type else {}
    reply = await echo.request(method, "/echo", content=b'{"n": 5}', headers=headers)
    assert reply.status_code == 415
    assert f"a {method} body must be sent as application/json" in reply.json()["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_a_request_without_a_body_needs_no_content_type(echo, method):
    reply = await echo.request(method, "/echo?n=3")
    assert reply.status_code == 200 and reply.json()["data"]["n"] == 3


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("false", False), ("TRUE", True)])
async def test_booleans_accept_true_false_1_0(echo, value, expected):
    assert (await echo.get("/echo", params={"flag": value})).json()["data"]["flag"] is expected


@pytest.mark.parametrize("params, message", [
    ({"n": "abc"}, "argument 'n': expected an integer, got 'abc'"),
    ({"n": "1.5"}, "argument 'n': expected an integer"),
    ({"x": "nan"}, "argument 'x': expected a number"),
    ({"flag": "maybe"}, "argument 'flag': expected a boolean"),
    ({"filter": "{not json"}, "argument 'filter': expected a JSON object"),
    ({"filter": "[1]"}, "argument 'filter': expected a JSON object"),
    ({"tags": '{"a": 1}'}, "argument 'tags': expected a JSON list"),
    ({"since": "yesterday-ish"}, "argument 'since': expected a date and time"),
])
async def test_bad_query_values_get_400_naming_the_argument(echo, params, message):
    reply = await echo.get("/echo", params=params)
    assert reply.status_code == 400
    assert message in reply.json()["error"]


@pytest.mark.parametrize("body, message", [
    ({"n": "x"}, "argument 'n': expected an integer"),
    ({"n": True}, "argument 'n': expected an integer"),
    ({"name": 5}, "argument 'name': expected a string"),
    ({"filter": [1, 2]}, "argument 'filter': expected a JSON object"),
])
async def test_bad_json_types_get_400_naming_the_argument(echo, body, message):
    reply = await echo.post("/echo", json=body)
    assert reply.status_code == 400 and message in reply.json()["error"]


@pytest.mark.parametrize("content, message", [
    (b'{"n": 1', "request body is not valid JSON"),
    (b"[1, 2]", "request body must be a JSON object, got list"),
    (b'"text"', "request body must be a JSON object, got str"),
    (b"\xff\xfe", "request body is not valid JSON"),
])
async def test_malformed_bodies_get_400(echo, content, message):
    reply = await echo.post("/echo", content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and message in reply.json()["error"]


async def test_missing_required_argument_is_400(echo):
    reply = await echo.get("/required")
    assert reply.status_code == 400 and reply.json()["error"] == "argument 'needed' is required"


@pytest.mark.parametrize("value", ["123", "zzzzzzzzzzzzzzzzzzzzzzzz", "5f6252b42e84fa29038a3e3f00"])
async def test_invalid_ids_are_400(echo, value):
    reply = await echo.get(f"/id/{value}")
    assert reply.status_code == 400 and "bad job id" in reply.json()["error"]


async def test_valid_id_is_accepted(echo):
    assert (await echo.get("/id/5f6252b42e84fa29038a3e3f")).json()["data"] == "5f6252b42e84fa29038a3e3f"


async def test_oversized_body_is_413(echo, config):
    big = json.dumps({"name": "x" * (config.max_body_size + 10)})
    reply = await echo.post("/echo", content=big, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert "exceeds the limit" in reply.json()["error"]


async def test_oversized_chunked_body_is_413(echo, config):
    async def chunks():
        for _ in range(config.max_body_size // 65536 + 2):
            yield b"x" * 65536
    reply = await echo.post("/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413


async def test_oversized_body_from_anonymous_caller_is_refused_before_reading(server, config):
    async with httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.post("/whoami", content=b"x" * (config.max_body_size + 1))
    assert reply.status_code == 413
